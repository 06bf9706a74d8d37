"""Every model service of a zoo on loopback ports (managers on FakeDevices, fake adapters) behind the real
gateway: the status page, `zoo status` and dashboards tests see a live zoo without loading models."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from serving.router.fanout import env_key
from serving.services.app import create_app
from serving.settings import Settings
from serving.vram.devices import FakeDevice
from serving.vram.fakes import FakeBehaviour, fake_registry
from tests.integration.svc_helpers import BackgroundServer

TOKEN = "s3cret-admin"
GB = 2**30


@contextlib.contextmanager
def running_zoo(zoo, tmp_path: Path, *, down: frozenset[str] = frozenset(),
                behaviour: FakeBehaviour | None = None) -> Iterator[tuple[str, dict[str, str]]]:
    """Every model service of `zoo` on a loopback port (fake devices), then the gateway; yields its URL and the
    services' URLs. `behaviour` scripts the fake adapters (e.g. a gate that holds a load)."""
    urls: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        for name, spec in zoo.services.items():
            if spec.kind == "gateway":
                continue
            if name in down:
                urls[name] = "http://127.0.0.1:9"  # discard port: connection refused
                continue
            device = FakeDevice(int(spec.vram_budget_gb * GB) + GB, name=f"fake:{spec.gpu or 0}")
            registry = fake_registry(behaviour or FakeBehaviour())
            app = create_app(zoo, name, device=device, registry=registry, admin_token=TOKEN)
            urls[name] = stack.enter_context(BackgroundServer(app))
        env = {env_key(n): u for n, u in urls.items()} | {"ZOO_ADMIN_TOKEN": TOKEN,
                                                           "DATABASE_URL": f"sqlite:///{tmp_path / 'control.db'}"}
        gw = create_app(zoo, "gateway", settings=Settings.from_env(env))
        yield stack.enter_context(BackgroundServer(gw)), urls
