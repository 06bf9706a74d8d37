"""Every transformers-family model of zoo.yaml loads and predicts through its service's
OnDemandModelManager on the CPU (leases, worker-thread inference, unload back to COLD)."""

from __future__ import annotations

from _hf_support import image

HF_FAMILIES = {"hf_image_classifier", "clip", "florence2", "vitpose", "depth_anything", "xclip", "segformer", "causal_lm"}
CHAT = [{"role": "user", "content": "Anyone at the door?"}]
INPUTS = {
    "xclip": ([[image(), image(seed=1)]], {}),
    "florence2": ([image()], {"max_new_tokens": 4, "num_beams": 1}),
    "causal_lm": ([CHAT], {"max_new_tokens": 3}),
}


def hf_models_by_service(zoo):
    out = {}
    for svc in zoo.services:
        names = [n for n in zoo.services[svc].models if zoo.models[n].family in HF_FAMILIES]
        if names:
            out[svc] = names
    return out


async def test_hf_models_through_the_manager(built_models, zoo):
    from serving.vram.devices import CpuDevice
    from serving.vram.manager import OnDemandModelManager

    by_service = hf_models_by_service(zoo)
    built_models(*[n for names in by_service.values() for n in names])
    assert sum(len(v) for v in by_service.values()) >= 14
    for service, names in by_service.items():
        manager = OnDemandModelManager.from_zoo(zoo, service, device=CpuDevice())
        try:
            for name in names:
                family = zoo.models[name].family
                batch, opts = INPUTS.get(family, ([image()], {}))
                async with manager.use(name) as adapter:
                    out = await manager.run(adapter.predict, batch, **opts)
                    assert adapter.format == "hf" and adapter.param_bytes() > 0
                assert len(out) == len(batch) and isinstance(out[0], dict), name
                await manager.unload(name, to="cold")
        finally:
            await manager.stop()
        status = manager.status()
        assert status["loaded_models"] == [], service
