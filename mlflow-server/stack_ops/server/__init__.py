"""What runs inside the mlflow-server container: the server, its app and its authorization."""
