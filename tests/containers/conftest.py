"""The container fixtures (engine, images, a running compose stack per Compose flavour),
defined in test_compose and shared with the other container test modules."""

from tests.containers.test_compose import compose_env, engine, images, stack  # noqa: F401
