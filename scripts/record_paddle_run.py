"""Records a real PaddleDetection inference run into tests/data/real_runs/NAME (run in the paddle
environment of docs/paddle.md, with PaddleDetection's source on PYTHONPATH): its
configs/gn/CONFIG.yml model (model.eval(), the standard `_forward`), given the deterministic
seed-SEED weights of tests/detweights.py (`paddle_arrays`: generated under names and shapes in
torch's layout, then stored as paddle keeps them) and `make_image(H, W, SEED + 1)` (RGB, as ppdet's
Decode gives it) through ppdet's own reader ops (Resize keep_ratio, interp 2; NormalizeImage;
Permute; PadBatch), Resize's target size SHORT x LONG (smaller than the configs' 800 x 1333, to keep
the tests' forwards cheap); optionally the RPN's pre_nms_top_n and post_nms_top_n and MultiClassNMS's
keep_top_k set to PRE, POST and KEEP (fewer RoIs through a cascade's three box heads).

    PYTHONPATH=PaddleDetection python scripts/record_paddle_run.py CONFIG SEED H W SHORT LONG NAME [PRE POST KEEP]

Writes keys.txt (paddle's names and shapes), meta.json and reference.npz: the padded network input's
sha256, im_shape and scale_factor; the first 4 channels of each FPN level; the RPN's proposals;
the final detections (`bbox`: label, score, x1, y1, x2, y2 in original pixels); the mask head's
probabilities of the first 20 detections; of a cascade (CascadeHead) also the probabilities
averaged over its stages (`cascade_scores`) and the last stage's RoIs (`cascade_rois`), what
BBoxPostProcess decodes.
"""
import hashlib
import json
import sys
from pathlib import Path

from record_paddle_files import ROOT, _without_imgaug

sys.path.insert(0, str(ROOT / "tests"))
import detweights  # noqa: E402

LINEAR = ("bbox_head.head.fc6.weight", "bbox_head.bbox_score.weight", "bbox_head.bbox_delta.weight",  # [in, out]:
          *(f"bbox_head.{n}.weight" for s in range(3) for n in (f"head.{s}.fc6", f"bbox_score_stage{s}",
                                                                 f"bbox_delta_stage{s}")))
# converters/paddle.py LINEAR, which cannot be imported here (gnhub needs torch; this environment has none)


def main(config: str, seed: int, h: int, w: int, short: int, long: int, name: str, pre: int = 1000,
         post: int = 1000, keep: int = 100) -> None:
    import numpy as np
    import paddle
    import ppdet
    from ppdet.core.workspace import create, load_config
    from ppdet.data.transform.batch_operators import PadBatch
    from ppdet.data.transform.operators import NormalizeImage, Permute, Resize

    cfg = load_config(str(Path(ppdet.__file__).parents[1] / "configs" / "gn" / f"{config}.yml"))
    model = create(cfg.architecture)
    entries = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    weights = detweights.paddle_arrays(entries, seed, LINEAR)
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in weights.items()})
    model.eval()
    model.rpn_head.test_proposal.pre_nms_top_n, model.rpn_head.test_proposal.post_nms_top_n = pre, post
    model.bbox_post_process.nms.keep_top_k = keep

    image = detweights.make_image(h, w, seed + 1)
    sample = {"image": image.copy()}
    sample = Resize(target_size=[short, long], keep_ratio=True, interp=2)(sample)
    sample = NormalizeImage(is_scale=True, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])(sample)
    sample = Permute()(sample)
    sample = PadBatch(pad_to_stride=32)([sample])[0]
    inputs = {"image": paddle.to_tensor(sample["image"][None]), "im_shape": paddle.to_tensor(sample["im_shape"][None]),
              "scale_factor": paddle.to_tensor(sample["scale_factor"][None])}

    seen = {}

    def record(key):
        def hook(layer, inputs, output):  # returns None: the output goes on unchanged
            seen[key] = output
        return hook

    for key in ("neck", "rpn_head", "bbox_head", "mask_head"):
        getattr(model, key).register_forward_post_hook(record(key))
    with paddle.no_grad():
        model.inputs = inputs
        out = model.get_pred()
    rois, rois_num, _ = seen["rpn_head"]
    ref = {
        "input_sha256": np.array(hashlib.sha256(sample["image"].tobytes()).hexdigest()),
        "input_shape": np.array(sample["image"].shape), "im_shape": sample["im_shape"],
        "scale_factor": sample["scale_factor"],
        **{f"fpn_p{i + 2}_first4": f.numpy()[0, :4] for i, f in enumerate(seen["neck"])},
        "proposals": rois[0].numpy(), "bbox": out["bbox"].numpy(), "bbox_num": out["bbox_num"].numpy(),
    }
    if "mask_head" in seen:
        ref["mask_probs_first20"] = seen["mask_head"].numpy()[:20]
    if hasattr(model.bbox_head, "get_refined_rois"):  # CascadeHead: ((deltas, scores), head)
        ref["cascade_scores"] = seen["bbox_head"][0][1].numpy()
        ref["cascade_rois"] = model.bbox_head.get_refined_rois()[0].numpy()
    case = ROOT / "tests" / "data" / "real_runs" / name
    case.mkdir(parents=True, exist_ok=True)
    lines = [f"# state_dict of PaddleDetection's {config}: name<TAB>shape"]
    lines += [f"{k}\t{','.join(map(str, s))}" for k, s in entries]
    (case / "keys.txt").write_text("\n".join(lines) + "\n")
    np.savez_compressed(case / "reference.npz", **ref)
    meta = {"paddle_version": paddle.__version__, "config": f"configs/gn/{config}.yml", "seed": seed,
            "image_seed": seed + 1, "image_shape": [h, w], "target_size": [short, long],
            "image_sha256": hashlib.sha256(image.tobytes()).hexdigest(),
            "pre_nms_top_n": pre, "post_nms_top_n": post, "keep_top_k": keep,
            "weights_sha256": detweights.weights_digest(weights)}
    (case / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{case}: {int(out['bbox_num'][0])} detections, {len(ref['proposals'])} proposals, "
          f"input {sample['image'].shape}")


if __name__ == "__main__":
    _without_imgaug()
    a = sys.argv[1:]
    main(a[0], int(a[1]), int(a[2]), int(a[3]), int(a[4]), int(a[5]), a[6], *map(int, a[7:]))
