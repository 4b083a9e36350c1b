"""Observability: the event bus behind `pilotif events` and `up --webhook`, and the
Prometheus metrics behind `--metrics`."""

from pilotif.observe.events import (
    EVENT_KINDS,
    Event,
    EventBus,
    Publish,
    Subscription,
    no_publish,
)
from pilotif.observe.metrics import (
    NodeCollector,
    NodeSample,
    PeerSample,
    RegistryCollector,
    RegistrySample,
    render,
    start_metrics_server,
)
from pilotif.observe.webhook import Webhook, WebhookError, check_webhook_url

__all__ = [
    "EVENT_KINDS",
    "Event",
    "EventBus",
    "NodeCollector",
    "NodeSample",
    "PeerSample",
    "Publish",
    "RegistryCollector",
    "RegistrySample",
    "Subscription",
    "Webhook",
    "WebhookError",
    "check_webhook_url",
    "no_publish",
    "render",
    "start_metrics_server",
]
