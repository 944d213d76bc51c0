"""`warmbuild doctor`: an advisor for ML Dockerfiles, and the rewrite behind `build --uv`.

parse (BuildKit's parser) → analysis (stages, commands) → rules (findings) / rewrite (fixes) →
report, tied together by diagnosis. Everything is pure except diagnosis.py and context.py, which
read the files. Nothing is imported here: the parser's native module stays out of every build's
start-up unless `doctor` or `--uv` is used.
"""
