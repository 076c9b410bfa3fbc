"""The generated toy web world (scenes, noise, the world's files) and the demo that runs on it."""
