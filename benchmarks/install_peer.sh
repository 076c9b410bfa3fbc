#!/usr/bin/env bash
# clip-retrieval 2.45 for `benchmarks/score_throughput.py --peer`, beside filter-pool's venv.
#
# clip-retrieval pins numpy<2, pyarrow<16 and open_clip<3, which filter-pool's environment
# cannot have, so it is not a dependency: this puts it, without its pinned dependencies, into
# benchmarks/_work/peer-site together with the modules its inference path imports that the
# venv lacks (its package __init__ imports the web back end and sentence-transformers too).
# It then runs on the venv's torch, numpy, pyarrow, open_clip and webdataset.
set -euo pipefail
cd "$(dirname "$0")/.."
site=benchmarks/_work/peer-site
rm -rf "$site"
.venv/bin/pip install --quiet --no-deps --target "$site" \
    clip-retrieval==2.45.0 all_clip==1.3.0 clip-anytorch==2.6.0 \
    flask flask_restful flask_cors werkzeug itsdangerous blinker aniso8601 prometheus_client \
    sentence-transformers==2.7.0 h5py autofaiss embedding-reader \
    scikit-learn joblib threadpoolctl narwhals "setuptools<80"
rm -rf "$site/bin"
.venv/bin/python - "$site" <<'PY'
import subprocess, sys
site = sys.argv[1]
check = [sys.executable, "-c", "import clip_retrieval.clip_inference.main"]
subprocess.run(check, check=True, env={"PYTHONPATH": site, "PATH": "/usr/bin:/bin"})
print(f"clip-retrieval importable from {site}")
PY
