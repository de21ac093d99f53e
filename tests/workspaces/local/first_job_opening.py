"""What a fine-tune job does first with the workspace's MLflow database, at a given moment."""

import sys
import time

import mlflow

from workspaces.local import mlflow_store

if __name__ == "__main__":
    uri, artifacts, start_at = sys.argv[1], sys.argv[2], float(sys.argv[3])
    while time.time() < start_at:  # every process opens the database at the same moment
        time.sleep(0.001)
    experiment = mlflow_store.experiment_id(uri, "chat_completion_test", artifacts)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=experiment):
        mlflow.log_metric("loss", 1.0)
    print("opened", experiment)
