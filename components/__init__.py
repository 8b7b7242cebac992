"""The logic of llm2slm as plain typed functions, one subpackage per step (collect … serve) plus the shared parts
(core, slm, scoring). Framework-free: nothing here imports Prefect or MLflow (tests/unit/test_architecture.py)."""
