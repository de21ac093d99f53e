"""An HTTP-level fake of the Azure ML services azure-ai-ml talks to, for tests.

It speaks HTTPS with a certificate made at test time, keeps state (jobs progress over
polls, endpoints, deployments, models, blobs), records every request, and can inject
faults. Response shapes follow the official REST examples copied into ``examples/``.
"""

from tests.azure.fake_azureml.server import FakeServer, Fault, Recorded
from tests.azure.fake_azureml.service import FakeAzureML

__all__ = ["FakeAzureML", "FakeServer", "Fault", "Recorded"]
