"""The health endpoints answer probes whatever Host they send; nothing else does."""

from __future__ import annotations

import pytest
from django.test import Client


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_endpoints_answer_any_host_a_probe_sends(path):
    """The kubelet sends the pod's address as Host; ALLOWED_HOSTS need not list it."""
    for host in ("10.1.2.3:8000", "localhost", "some-pod.internal"):
        response = Client().get(path, HTTP_HOST=host)
        assert response.status_code == 200, (host, response.content)


@pytest.mark.django_db
def test_other_paths_still_refuse_a_host_outside_allowed_hosts():
    assert Client().get("/accounts/login/", HTTP_HOST="10.1.2.3:8000").status_code == 400


@pytest.mark.django_db
def test_health_answers_are_counted_by_their_route():
    from prometheus_client import REGISTRY

    labels = {"route": "/healthz", "method": "GET", "status": "200"}
    name = "parley_http_request_duration_seconds_count"
    before = REGISTRY.get_sample_value(name, labels) or 0
    Client().get("/healthz", HTTP_HOST="10.1.2.3")
    assert REGISTRY.get_sample_value(name, labels) == before + 1


@pytest.mark.django_db
async def test_readiness_keeps_one_channel_however_often_it_is_probed(settings):
    """Each probe made a channel of its own, which the pub/sub layer keeps as a Redis
    subscription for the process's life (17,000 a day per pod at a 5 s probe)."""
    import redis.asyncio as aioredis
    from channels.layers import get_channel_layer

    from parley import health

    async def subscribed() -> int:
        client = aioredis.Redis.from_url(settings.REDIS_URLS[0])
        try:
            return len(await client.pubsub_channels(f"{settings.CHANNEL_LAYER_PREFIX}*"))
        finally:
            await client.aclose()

    before = await subscribed()
    for _ in range(30):
        await health._layer_round_trip()
    assert await subscribed() - before <= 1
    await get_channel_layer().flush()
