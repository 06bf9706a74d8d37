"""Every model of zoo.yaml, whatever its family, loads and predicts through its service's
OnDemandModelManager on the CPU (leases, worker-thread inference, warm-tier restore, unload to COLD)."""

from __future__ import annotations

from _hf_support import image

CHAT = [{"role": "user", "content": "Anyone at the door?"}]
INPUTS = {
    "xclip": ([[image(), image(seed=1)]], {}),
    "florence2": ([image()], {"max_new_tokens": 4, "num_beams": 1}),
    "causal_lm": ([CHAT], {"max_new_tokens": 3}),
    "gguf": ([CHAT], {"max_new_tokens": 3}),
}


async def test_every_zoo_model_through_its_manager(built_models, zoo):
    from serving.vram.devices import CpuDevice
    from serving.vram.manager import OnDemandModelManager

    served = {s: list(v.models) for s, v in zoo.services.items() if v.models}
    every = [n for names in served.values() for n in names]
    assert sorted(every) == sorted(zoo.models), "a zoo model belongs to no service"
    built_models(*every)
    for service, names in served.items():
        # a host tier on every service (some have none in zoo.yaml) so every family makes the WARM round trip
        manager = OnDemandModelManager.from_zoo(zoo, service, device=CpuDevice(), host_cache_bytes=4 << 30)
        try:
            for name in names:
                batch, opts = INPUTS.get(zoo.models[name].family, ([image(h=128, w=96)], {}))
                async with manager.use(name) as adapter:
                    out = await manager.run(adapter.predict, batch, **opts)
                    assert adapter.format and adapter.param_bytes() > 0, name
                assert len(out) == len(batch) and isinstance(out[0], dict), name
                # a trip through the host warm tier gives the same answer without a disk load
                loads = manager.entry(name).load_s
                assert (await manager.unload(name, to="warm"))["tier"] == "WARM", name
                assert manager.ledger.host.get(name) > 0 and manager.ledger.device.get(name) == 0, name
                async with manager.use(name) as adapter:
                    again = await manager.run(adapter.predict, batch, **opts)
                assert manager.entry(name).restore_s is not None and manager.entry(name).load_s == loads, name
                if zoo.models[name].family not in ("causal_lm", "gguf", "florence2"):  # generation may sample
                    assert again == out, name
                await manager.unload(name, to="cold")
                assert manager.entry(name).tier == "COLD", name
        finally:
            await manager.stop()
        assert manager.status()["loaded_models"] == [], service
        manager.check_invariants()


async def test_real_models_load_straight_into_the_host_tier(built_models, zoo):
    """Thermal WARM with no device room: a transformers model and OSNet are built in host RAM, then the
    first request restores them (one copy, no disk load) and answers like a model loaded normally."""
    from serving.vram.devices import CpuDevice
    from serving.vram.manager import OnDemandModelManager

    built_models("pet_classifier", "person_reid")
    batch = [image(h=128, w=96)]
    manager = OnDemandModelManager.from_zoo(zoo, "enrichment-light", device=CpuDevice())
    try:
        for name in ("pet_classifier", "person_reid"):
            async with manager.use(name) as adapter:
                want = await manager.run(adapter.predict, batch)
            await manager.unload(name, to="cold")
            manager.ledger.device.budget = 0  # no device room at all: only the host tier can take it
            st = await manager.prewarm(name)
            assert st["tier"] == "WARM" and st["host_mb"] > 0 and manager.ledger.device.used == 0, name
            manager.ledger.device.budget = zoo.services["enrichment-light"].vram_budget_bytes
            async with manager.use(name) as adapter:
                got = await manager.run(adapter.predict, batch)
            assert got == want and manager.entry(name).restore_s is not None, name
            await manager.unload(name, to="cold")
    finally:
        await manager.stop()
    manager.check_invariants()
