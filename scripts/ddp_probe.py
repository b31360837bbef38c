"""Run ``python -m <package> ...`` and record the process group it creates: ``ddp_probe.py RECORD -m PKG ARGS...``.

Used by ``gpu_check.py`` to prove that a training command really went through DDP (``MEDREPRO_FORCE_DDP=1``): the
record (JSON) lists every ``init_process_group`` call (backend, world size, device_id) and every
``DistributedDataParallel`` wrap (the module's class name). The command's own exit code is returned.
"""

from __future__ import annotations

import json
import runpy
import sys


def main() -> int:
    if len(sys.argv) < 4 or sys.argv[2] != "-m":
        print("usage: ddp_probe.py RECORD.json -m PACKAGE [ARGS...]", file=sys.stderr)
        return 2
    record_path, module, args = sys.argv[1], sys.argv[3], sys.argv[4:]
    import torch
    import torch.distributed as dist

    record: dict = {"groups": [], "ddp": []}

    def save() -> None:
        with open(record_path, "w", encoding="utf-8") as f:
            json.dump(record, f)

    real_init = dist.init_process_group

    def init_process_group(*a, **kw):  # noqa: ANN002, ANN003 - torch's signature
        real_init(*a, **kw)
        record["groups"].append(
            {
                "backend": str(dist.get_backend()),
                "world_size": dist.get_world_size(),
                "device_id": str(kw.get("device_id")),
            }
        )
        save()

    dist.init_process_group = init_process_group
    ddp_cls = torch.nn.parallel.DistributedDataParallel
    real_ddp_init = ddp_cls.__init__

    def ddp_init(self, module, *a, **kw):  # noqa: ANN001, ANN002, ANN003
        real_ddp_init(self, module, *a, **kw)
        record["ddp"].append(type(module).__name__)
        save()

    ddp_cls.__init__ = ddp_init
    save()
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
