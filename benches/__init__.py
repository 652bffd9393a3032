"""streamcore's benchmark suite, installed as ``streamcore.benches``.

Run it with ``python -m streamcore bench [--quick] [--only NAME ...] [--out DIR]``.
Each workload is a module with ``run(quick: bool) -> dict`` (see
``streamcore.benches.common.result`` for the shape of that dict); the runner
prints them against their baselines and targets and writes ``results.json``.

Pure Python: the package is mapped from the repository's ``benches/`` folder,
so its modules import each other only as ``streamcore.benches.<module>``.
"""
