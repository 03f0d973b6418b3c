"""Records a real mmdetection 3.3 Faster R-CNN run into tests/data/real_runs/NAME (run where
mmdetection is installed; see README "--against mmdet"): the key list of its packaged config's
detector, the run's meta, and its 100 final detections on `make_image(H, W, seed)` with the
deterministic seed-`seed` weights of tests/detweights.py.

    python scripts/record_faster_rcnn_run.py ZOO_NAME SEED H W NAME
"""
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import detweights  # noqa: E402

from gnhub.reference.mmdet_framework import MMDetFramework, mmdet_version, packaged_config  # noqa: E402


def main(zoo: str, seed: int, h: int, w: int, name: str) -> None:
    import mmcv
    from mmdet.apis import init_detector

    config = packaged_config(zoo)
    state = init_detector(str(config), None, device="cpu").state_dict()
    entries = [(k, tuple(v.shape)) for k, v in state.items()]
    out = ROOT / "tests" / "data" / "real_runs" / name
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# state_dict of mmdetection's {config.stem}: name<TAB>shape"]
    lines += [f"{k}\t{','.join(map(str, s))}" for k, s in entries]
    (out / "keys.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rgb = detweights.make_image(h, w, seed)
    run = MMDetFramework(detweights.make_state_dict(entries, seed), {}, config)(rgb)
    np.savez_compressed(out / "reference.npz", boxes=run["boxes"].numpy(), scores=run["scores"].numpy(),
                        labels=run["labels"].numpy(), proposals=run["proposals"].numpy(),
                        proposal_scores=run["proposal_scores"].numpy())
    meta = {"zoo_name": zoo, "config": f"configs/{config.parent.name}/{config.name}", "seed": seed,
            "image": [h, w, seed], "mmdet_version": mmdet_version(), "mmcv_version": mmcv.__version__,
            "weights_sha256": detweights.weights_digest(detweights.make_arrays(entries, seed))}
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
