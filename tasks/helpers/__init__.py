"""What the Prefect tasks share that is not a task: MLflow tracking and the model registry, retry rules, progress
reporting, and the data-parallel runner. May import Prefect and MLflow; components/ never imports this."""
