"""Records one real PaddleDetection training step into tests/data/real_runs/NAME (run in the paddle
environment of docs/paddle.md, with PaddleDetection's source on PYTHONPATH): configs/gn/CONFIG.yml
(a Faster R-CNN or a cascade) made tiny (3 classes, a 32-channel GN FPN, 4conv1fc heads of 32
channels and a 64-wide fc: the
ResNet-50 with its frozen BatchNorm and freeze_at 0 as configured), the deterministic seed-SEED
weights of tests/detweights.py (`paddle_arrays`), two images (`make_image`, normalised as
NormalizeImage does, zero-padded to one batch) with fixed ground truth, and fixed proposals in
place of the RPN's (RPNHead._gen_proposal replaced: the RoI losses get what the test gives gnhub).
The samplers' quotas exceed the candidates (RPNTargetAssign's batch_size_per_im 4096 over 1536
anchors; BBoxAssigner's 128 foreground and 512 in all over 17 + 2 RoIs), so each takes every
candidate and the step is deterministic whatever paddle.randperm draws. With `float64` the step
runs in float64 (`_float64`): a cascade's three stages meet ReLU inputs that cancel to within
float32 rounding of zero, which the two frameworks round to opposite signs (docs/training.md).

    cd scripts && PYTHONPATH=PaddleDetection python record_paddle_train.py CONFIG SEED NAME [float64]

Writes keys.txt (paddle's names and shapes), meta.json and reference.npz: the batch's sha256, the
ground truth and proposals, the losses, every trained parameter's gradient norm and the full
gradients of the RPN's and the box heads' predictors.
"""
import hashlib
import json
import sys
from pathlib import Path

from record_paddle_files import ROOT, _without_imgaug
from record_paddle_run import LINEAR

sys.path.insert(0, str(ROOT / "tests"))
import detweights  # noqa: E402

IMAGES = ((64, 96), (56, 80))  # (h, w); the batch is padded to 64 x 96
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BOXES = (((8.0, 6.0, 40.0, 50.0), (50.0, 20.0, 90.0, 60.0)), ((10.0, 12.0, 60.0, 40.0), (4.0, 30.0, 30.0, 54.0)))
LABELS = ((1, 2), (0, 2))
FULL = ("rpn_head.rpn_rois_score.weight", "rpn_head.rpn_rois_delta.weight", "bbox_head.bbox_score.weight",
        "bbox_head.bbox_delta.weight",
        *(f"bbox_head.bbox_{n}_stage{s}.weight" for s in range(3) for n in ("score", "delta")))


def batch(np):
    """The padded network input (N, 3, 64, 96) of IMAGES, as NormalizeImage(is_scale=True) computes it."""
    out = np.zeros((len(IMAGES), 3, 64, 96), np.float32)
    for i, (h, w) in enumerate(IMAGES):
        im = detweights.make_image(h, w, 61 + i).astype(np.float32) * np.float32(1 / 255)
        im = (im - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
        out[i, :, :h, :w] = im.transpose(2, 0, 1)
    return out


def proposals(np, seed: int):
    """17 proposals an image: each ground-truth box jittered 6 times, and 5 boxes anywhere."""
    rng = np.random.default_rng(seed)
    out = []
    for (h, w), gt in zip(IMAGES, BOXES):
        gt = np.array(gt, np.float32)
        near = np.repeat(gt, 6, axis=0) + rng.uniform(-6, 6, (6 * len(gt), 4)).astype(np.float32)
        xy = rng.uniform(0, [w - 20, h - 20], (5, 2)).astype(np.float32)
        anywhere = np.concatenate([xy, xy + rng.uniform(8, 20, (5, 2)).astype(np.float32)], axis=1)
        boxes = np.concatenate([near, anywhere])
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        out.append(boxes.astype(np.float32))
    return out


def _float64(paddle, np) -> None:
    """Every tensor float64: the default dtype, and float32 asked of paddle's constructors and casts
    mapped to float64 (PaddleDetection names float32 for its anchors and targets)."""
    paddle.set_default_dtype("float64")
    to_tensor, arange, zeros, ones, cast, tensor_cast, astype = (
        paddle.to_tensor, paddle.arange, paddle.zeros, paddle.ones, paddle.cast, paddle.Tensor.cast,
        paddle.Tensor.astype)

    def wide(dtype):
        return "float64" if dtype in ("float32", paddle.float32, np.float32) else dtype

    def as_tensor(data, dtype=None, *args, **kwargs):
        out = to_tensor(data, wide(dtype), *args, **kwargs)
        return astype(out, "float64") if out.dtype == paddle.float32 else out

    paddle.to_tensor = as_tensor
    paddle.arange = lambda *args, dtype=None, **kwargs: arange(*args, dtype=wide(dtype), **kwargs)
    paddle.zeros = lambda shape, dtype=None, name=None: zeros(shape, wide(dtype))
    paddle.ones = lambda shape, dtype=None, name=None: ones(shape, wide(dtype))
    paddle.cast = lambda x, dtype: cast(x, wide(dtype))
    paddle.Tensor.cast = lambda x, dtype: tensor_cast(x, wide(dtype))
    paddle.Tensor.astype = lambda x, dtype: astype(x, wide(dtype))


def main(config: str, seed: int, name: str, float64: bool = False) -> None:
    import numpy as np
    import paddle
    import ppdet
    from ppdet.core.workspace import create, load_config

    paddle.seed(seed)
    if float64:
        _float64(paddle, np)
    cfg = load_config(str(Path(ppdet.__file__).parents[1] / "configs" / "gn" / f"{config}.yml"))
    cfg["num_classes"] = 3
    cfg["FPN"]["out_channel"] = 32
    head = "CascadeXConvNormHead" if "CascadeXConvNormHead" in cfg else "XConvNormHead"
    cfg[head]["conv_dim"], cfg[head]["out_channel"] = 32, 64
    cfg["RPNHead"]["rpn_target_assign"]["batch_size_per_im"] = 4096
    model = create(cfg.architecture)
    entries = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    weights = detweights.paddle_arrays(entries, seed, LINEAR)
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in weights.items()})
    model.train()
    props = proposals(np, seed)
    model.rpn_head._gen_proposal = lambda *a: ([paddle.to_tensor(p) for p in props],
                                               paddle.to_tensor([len(p) for p in props], dtype="int32"))
    image = batch(np)
    inputs = {"image": paddle.to_tensor(image),
              "im_shape": paddle.to_tensor(np.array(IMAGES, np.float32)),
              "scale_factor": paddle.ones([len(IMAGES), 2]),
              "gt_bbox": [paddle.to_tensor(np.array(b, np.float32)) for b in BOXES],
              "gt_class": [paddle.to_tensor(np.array(c, np.int32)[:, None]) for c in LABELS]}
    losses = model(inputs)
    losses["loss"].backward()
    grads = {k: p.grad.numpy() for k, p in model.named_parameters() if p.grad is not None}
    ref = {"input_sha256": np.array(hashlib.sha256(image.tobytes()).hexdigest()),
           **{k: np.array(float(v)) for k, v in losses.items()},
           "grad_norm_names": np.array(sorted(grads)),
           "grad_norm": np.array([np.linalg.norm(grads[k].astype(np.float64)) for k in sorted(grads)]),
           **{f"grad__{k}": grads[k] for k in FULL if k in grads},
           **{f"proposals_{i}": p for i, p in enumerate(props)}}
    case = ROOT / "tests" / "data" / "real_runs" / name
    case.mkdir(parents=True, exist_ok=True)
    lines = [f"# state_dict of PaddleDetection's {config}, made tiny: name<TAB>shape"]
    lines += [f"{k}\t{','.join(map(str, s))}" for k, s in entries]
    (case / "keys.txt").write_text("\n".join(lines) + "\n")
    np.savez_compressed(case / "reference.npz", **ref)
    meta = {"paddle_version": paddle.__version__, "config": f"configs/gn/{config}.yml", "seed": seed,
            "images": [[h, w, 61 + i] for i, (h, w) in enumerate(IMAGES)], "boxes": BOXES, "labels": LABELS,
            "mean": MEAN, "std": STD, "weights_sha256": detweights.weights_digest(weights),
            "dtype": "float64" if float64 else "float32"}
    (case / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(case, {k: float(v) for k, v in losses.items()}, f"{len(grads)} gradients")


if __name__ == "__main__":
    _without_imgaug()
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:] == ["float64"])
