"""Local fakes of ApexVerify and the CRMs, for the demo and the tests (the `sandbox` extra).

`SANDBOXES` is their table, which `connector sandbox NAME` is built from: each sandbox's module
defines `create_app(...)`, its app factory, and `command`, the click command that serves it. The
table imports none of them: a sandbox's module, and the extra's packages it needs, are loaded only
when that sandbox is asked for.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import click


@dataclass(frozen=True)
class Sandbox:
    name: str  # connector sandbox NAME
    title: str  # what it fakes
    module: str  # defines create_app (the app factory) and command (serves the app)
    help: str

    def command(self) -> click.Command:
        """The command serving this sandbox (imports its module: needs the sandbox extra)."""
        command = importlib.import_module(self.module).command
        assert isinstance(command, click.Command)
        return command


SANDBOXES = {
    sandbox.name: sandbox
    for sandbox in (
        Sandbox(
            "apexverify",
            "ApexVerify",
            "connector.sandbox.apexverify",
            "Run a local fake of the ApexVerify batch verification API.",
        ),
        Sandbox(
            "hubspot",
            "HubSpot",
            "connector.sandbox.hubspot",
            "Serve the HubSpot sandbox (token: HUBSPOT_ACCESS_TOKEN, any when unset).",
        ),
        Sandbox(
            "salesforce",
            "Salesforce",
            "connector.sandbox.salesforce",
            "Serve the Salesforce sandbox (session id: SALESFORCE_ACCESS_TOKEN, any when unset).",
        ),
    )
}


def sandboxes_help() -> str:
    """'Run a local fake of A, B or C.'"""
    titles = [sandbox.title for sandbox in SANDBOXES.values()]
    return f"Run a local fake of {', '.join(titles[:-1])} or {titles[-1]}."
