"""Start a worker: import the app, every agent and the web views, then run faust's Worker."""

from __future__ import annotations

from faust.worker import Worker

import agents.bandits
import agents.choices
import agents.experiments
import agents.insights
import agents.items
import agents.preferences
import streams.web  # noqa: F401  (registers the views)
from streams import web_api, web_experiments  # noqa: F401  (register their views)
from streams.app import app, settings

AGENT_MODULES = (
    agents.bandits,
    agents.choices,
    agents.experiments,
    agents.insights,
    agents.items,
    agents.preferences,
)


def run_worker() -> None:
    # The web port and host come from the app's configuration (streams.app).
    worker = Worker(app, loglevel=settings.log_level.upper())
    worker.execute_from_commandline()


if __name__ == "__main__":
    run_worker()
