"""PaddleDetection itself on one image, for `gnhub verify --against paddle` (paddle_framework.py):
run by PaddlePaddle's own interpreter (numpy<2; no torch, no gnhub), with PaddleDetection's source
folder first on sys.path:

    python paddle_worker.py --version PPDET            prints paddle's and ppdet's versions
    python paddle_worker.py REQUEST.json               runs one image

The request names PaddleDetection's own configs/gn/CONFIG.yml (never a config from the checkpoint),
the weights (an .npz of the state dict gnhub read, paddle's names and layouts), the image (.npz,
RGB uint8), the test settings gnhub may change (Resize's target size, the RPN's pre/post_nms_top_n,
keep_top_k) and the output .npz, which gets gnhub's stage names. Errors: one line on stderr, exit 2.
"""
import json
import sys
import types
from pathlib import Path

__all__ = ["run"]


def _imports(ppdet_root: str):
    """pycocotools before paddle (paddle 2.6's bundled zlib crashes its extension otherwise); an
    empty imgaug (ppdet imports it for lane-dataset transforms only); ppdet from `ppdet_root`. This
    script's own folder leaves sys.path first: its paddle.py (gnhub's reference) is not paddle."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    # in paddle's interpreter, after sys.path is cleaned: pycocotools first (see above)
    import pycocotools.coco  # noqa: F401

    for name in ("imgaug", "imgaug.augmenters", "imgaug.augmentables", "imgaug.augmentables.lines",
                 "imgaug.augmentables.segmaps"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["imgaug.augmentables.lines"].LineStringsOnImage = object
    sys.modules["imgaug.augmentables.lines"].LineString = object
    sys.modules["imgaug.augmentables.segmaps"].SegmentationMapsOnImage = object
    sys.path.insert(0, ppdet_root)
    # paddle's interpreter: ppdet only from ppdet_root, which is now on the path
    import paddle
    import ppdet

    return paddle, ppdet


def _fail(message: str):
    print(message, file=sys.stderr)
    sys.exit(2)


def _model(paddle, req: dict):
    """PaddleDetection's model of its own config, the weights loaded as they are (every name and
    shape must fit), in eval mode with the request's test settings."""
    # ppdet after _imports has put its folder on the path; numpy is paddle's (numpy<2)
    import numpy as np
    from ppdet.core.workspace import create, load_config

    cfg = load_config(str(Path(req["ppdet"]) / "configs" / "gn" / f"{req['config']}.yml"))
    model = create(cfg.architecture)
    weights = np.load(req["weights"], allow_pickle=False)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(weights[k].shape) for k in weights.files}
    if own != theirs:
        wrong = sorted(set(own) ^ set(theirs)) or sorted(k for k in own if own[k] != theirs[k])
        _fail(f"configs/gn/{req['config']}.yml: the checkpoint does not fit PaddleDetection's model "
              f"({len(wrong)} names or shapes differ, e.g. {wrong[:3]})")
    model.set_state_dict({k: paddle.to_tensor(weights[k]) for k in own})
    model.eval()
    model.rpn_head.test_proposal.pre_nms_top_n = req["pre_nms_top_n"]
    model.rpn_head.test_proposal.post_nms_top_n = req["post_nms_top_n"]
    model.bbox_post_process.nms.keep_top_k = req["keep_top_k"]
    return model, cfg


def _inputs(paddle, cfg, rgb, target_size):
    """The config's TestReader ops (Decode's conversion to RGB already done), Resize at
    `target_size`, then its batch ops: the model's inputs."""
    # ppdet after _imports has put its folder on the path
    from ppdet.data.transform import batch_operators, operators

    sample = {"image": rgb.copy()}
    for op in cfg["TestReader"]["sample_transforms"]:
        name, kwargs = next(iter(op.items()))
        if name == "Decode":
            continue
        kwargs = dict(kwargs or {}, **({"target_size": target_size} if name == "Resize" else {}))
        sample = getattr(operators, name)(**kwargs)(sample)
    batch = [sample]
    for op in cfg["TestReader"].get("batch_transforms", []):
        name, kwargs = next(iter(op.items()))
        batch = getattr(batch_operators, name)(**(kwargs or {}))(batch)
    return {k: paddle.to_tensor(batch[0][k][None]) for k in ("image", "im_shape", "scale_factor")}


def run(req: dict) -> None:
    paddle, _ = _imports(req["ppdet"])
    import numpy as np  # paddle's (numpy<2), after _imports

    model, cfg = _model(paddle, req)
    seen, levels = {}, []

    def keep(key, many=False):
        def hook(layer, inputs, output):  # returns None: the output goes on unchanged
            if many:
                seen.setdefault(key, []).append(output.numpy())
            else:
                seen.setdefault(key, output)
        return hook

    cascade = hasattr(model.bbox_head, "get_refined_rois")
    model.backbone.register_forward_post_hook(keep("backbone"))
    model.neck.register_forward_post_hook(keep("neck"))
    model.rpn_head.rpn_rois_score.register_forward_post_hook(keep("objectness", True))
    model.rpn_head.rpn_rois_delta.register_forward_post_hook(keep("deltas", True))
    model.rpn_head.register_forward_post_hook(keep("rpn"))
    head = model.bbox_head
    (head.bbox_score_stage0 if cascade else head.bbox_score).register_forward_post_hook(keep("cls"))
    (head.bbox_delta_stage0 if cascade else head.bbox_delta).register_forward_post_hook(keep("box"))
    masks = getattr(model, "mask_head", None) is not None
    if masks:
        model.mask_head.mask_fcn_logits.register_forward_post_hook(keep("mask_logits"))
    generate = model.rpn_head.test_proposal

    def proposals_of_level(**kwargs):  # each level's proposals and their logits, as generated
        out = generate(**kwargs)
        levels.append((out[0].numpy(), out[1].numpy().reshape(-1)))
        return out

    model.rpn_head.test_proposal = proposals_of_level
    rgb = np.load(req["image"], allow_pickle=False)["rgb"]
    model.inputs = _inputs(paddle, cfg, rgb, req["target_size"])
    with paddle.no_grad():
        pred = model.get_pred()
    rois = seen["rpn"][0][0].numpy()
    boxes, logits = np.concatenate([b for b, _ in levels]), np.concatenate([s for _, s in levels])
    found = [np.flatnonzero((boxes == r).all(axis=1))[0] for r in rois]  # each proposal's own logit
    bbox = pred["bbox"].numpy()
    kept = bbox[:, 0] >= 0  # get_pred labels empty boxes -1; gnhub drops them
    labels = bbox[kept, 0].astype(np.int64)
    out = {"input": model.inputs["image"].numpy(), "proposals": rois, "proposal_scores": logits[found],
           "roi.cls_logits": seen["cls"].numpy(), "roi.box_deltas": seen["box"].numpy(),
           "boxes": bbox[kept, 2:], "scores": bbox[kept, 1], "labels": labels}
    out.update({f"backbone.c{i + 2}": t.numpy() for i, t in enumerate(seen["backbone"])})
    out.update({f"fpn.p{i + 2}": t.numpy() for i, t in enumerate(seen["neck"])})
    out.update({f"rpn.objectness.p{i + 2}": t for i, t in enumerate(seen["objectness"])})
    out.update({f"rpn.deltas.p{i + 2}": t for i, t in enumerate(seen["deltas"])})
    if masks:
        logits = seen["mask_logits"].numpy()[kept] if "mask_logits" in seen else np.zeros((0, 1, 28, 28), np.float32)
        out["mask_logits"] = logits[np.arange(len(labels)), labels] if len(labels) else logits[:, 0]
        out["masks"] = pred["mask"].numpy()[kept].astype(bool)
    np.savez(req["output"], **out)


if __name__ == "__main__":
    if sys.argv[1] == "--version":
        paddle_module, ppdet_module = _imports(sys.argv[2])
        print(f"PaddlePaddle {paddle_module.__version__}, PaddleDetection "
              f"{getattr(ppdet_module, '__version__', 'source')} ({Path(ppdet_module.__file__).parents[1]})")
    else:
        run(json.loads(Path(sys.argv[1]).read_text()))
