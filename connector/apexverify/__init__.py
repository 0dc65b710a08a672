"""The ApexVerify batch verification API: client, answers and export reading."""

from connector.apexverify.client import ApexVerifyClient
from connector.apexverify.outcomes import (
    ApexVerifyError,
    BatchDetails,
    BatchStatus,
    LaunchOutcome,
    iter_export_records,
)

__all__ = [
    "ApexVerifyClient",
    "ApexVerifyError",
    "BatchDetails",
    "BatchStatus",
    "LaunchOutcome",
    "iter_export_records",
]
