"""`medsynth topics`: a deployment's first step creates the system's topics on its broker, once."""

from __future__ import annotations

import subprocess
import sys

from medsynth.bus.topics import all_topics

from platform_fixtures import settings_env


def test_topics_are_created_once_on_the_configured_broker(platform_settings) -> None:
    settings = platform_settings.model_copy(update={"topic_prefix": platform_settings.topic_prefix + "x"})  # none exist yet
    run = lambda: subprocess.run([sys.executable, "-m", "medsynth.local.cli", "topics"], env=settings_env(settings),  # noqa: E731
                                 capture_output=True, text=True, timeout=120)
    n = len(all_topics(settings.topic_prefix))
    first, second = run(), run()
    assert first.returncode == 0 and f"{n} topics on {settings.kafka_bootstrap}: {n} created, 0 already there" in first.stdout, first.stderr
    assert second.returncode == 0 and f"0 created, {n} already there" in second.stdout, second.stderr
