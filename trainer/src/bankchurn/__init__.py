"""Bank-churn training: data, config, pipeline and fully tracked MLflow runs."""

__version__ = "0.1.0"
