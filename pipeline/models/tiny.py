"""`--models tiny`: the tiny random-weight twin of every registered backend, built into one folder.

The twins themselves are built in `pipeline.models.twins`, which the registry names beside each
backend's loader; this module sits above the registry and walks it, so neither imports the other
back. `TINY_SAM_ARCH` and `sam_config` are re-exported for the benchmarks that time the tiny SAMs.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from pipeline.models import quiet_transformers
from pipeline.models.registry import BACKENDS, DEFAULT_BACKENDS, STAGES
from pipeline.models.twins import TINY_SAM_ARCH, blip, sam_config  # noqa: F401  (TINY_SAM_ARCH, sam_config re-exported)

# Bump when what make_tiny_models writes changes: the cache folder is named after it, so an older
# cache on a user's machine is rebuilt rather than read.
TINY_VERSION = 2


def make_tiny_models(folder: Path, seed: int = 0) -> Path:
    """Build and save a twin of every registered backend (and BLIP, the documented other captioner).

    Writes `twins.yaml` (every twin's spec, by stage and name) and `models.yaml` (the twins of the
    default backends: what `--models tiny` runs); returns the path of `models.yaml`."""
    quiet_transformers()
    folder.mkdir(parents=True, exist_ok=True)
    twins: dict[str, dict[str, dict]] = {}
    for stage in STAGES:
        twins[stage] = {}
        for name, backend in BACKENDS[stage].items():
            torch.manual_seed(seed)
            twins[stage][name] = backend.tiny(folder)
    torch.manual_seed(seed)
    twins["captioner"]["blip"] = blip(folder)
    header = "# tiny random-weight models for tests and dry runs: outputs are meaningless\n"
    (folder / "twins.yaml").write_text(header + yaml.safe_dump(twins, sort_keys=False))
    path = folder / "models.yaml"
    path.write_text(
        header + yaml.safe_dump({stage: twins[stage][DEFAULT_BACKENDS[stage]] for stage in STAGES}, sort_keys=False)
    )
    return path
