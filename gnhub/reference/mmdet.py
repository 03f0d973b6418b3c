"""An independent forward of mmdetection's GN Mask R-CNN and Faster R-CNN (ResNet or ResNeXt,
with or without weight standardisation), written against the source's own names.

It reads an mmdetection state_dict as it is (`backbone.`, `neck.`, `rpn_head.`, `roi_head.` or
1.x top-level heads) and follows mmdetection 3.3's inference step by step with plain torch,
torchvision and OpenCV calls (mmcv's ConvWS2d for the convs its config builds with
conv_cfg=ConvWS); it shares no code with gnhub's model (tests/test_frameworks.py holds it to
importing nothing of gnhub.modeling). Outputs use gnhub's stage names and class convention
(background last), so `gnhub verify` can compare the two.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import stages as S
from ..config import BGR_CAFFE

__all__ = ["MMDetReference", "STRIDES"]

STRIDES = (4, 8, 16, 32, 64)


class MMDetReference:
    def __init__(self, state_dict: dict[str, Tensor], settings: dict):
        """`settings` by config path: preprocess.*, rpn.*, roi_heads.* and which stages standardise
        their weights (*weight_std), as the source's converter and zoo entry state them."""
        # contiguous, as load_state_dict copies a checkpoint's tensors into mmdetection's parameters
        self.sd = {k: v.float().contiguous() for k, v in state_dict.items()}
        self.old = any(k.startswith("bbox_head.") for k in state_dict)  # 1.x: background first
        self.head = "" if self.old else "roi_head."
        self.s = {
            **BGR_CAFFE, "preprocess.max_size": (1333, 800), "preprocess.size_divisor": 32,
            "rpn.pre_nms_top_n": 1000, "rpn.post_nms_top_n": 1000, "rpn.nms_iou": 0.7, "rpn.min_size": 0.0,
            "roi_heads.score_thresh": 0.05, "roi_heads.nms_iou": 0.5, "roi_heads.detections_per_image": 100,
            "roi_heads.mask_threshold": 0.5, **settings,
        }
        # the name prefixes of the convs mmdetection builds with conv_cfg=dict(type='ConvWS')
        self.ws = tuple(prefix for key, prefix in (
            ("backbone.weight_std", "backbone."), ("fpn.weight_std", "neck."),
            ("roi_heads.box_weight_std", self.head + "bbox_head.shared_convs."),
            ("roi_heads.mask_weight_std", self.head + "mask_head.convs.")) if self.s.get(key))
        self.masks = any(k.startswith(self.head + "mask_head.") for k in self.sd)
        self.blocks = [
            len({k.split(".")[2] for k in self.sd if k.startswith(f"backbone.layer{i}.")}) for i in range(1, 5)
        ]

    # -- building blocks -------------------------------------------------------------------
    def gn(self, x: Tensor, prefix: str) -> Tensor:
        return F.group_norm(x, 32, self.sd[prefix + ".weight"], self.sd[prefix + ".bias"], 1e-5)

    def conv(self, x: Tensor, name: str, stride=1, padding=0) -> Tensor:
        """mmcv's conv_ws_2d where the config says ConvWS, else a plain conv; grouped where the
        weight has fewer input channels than x (ResNeXt)."""
        w = self.sd[name + ".weight"]
        if name.startswith(self.ws):
            c = w.size(0)
            flat = w.reshape(c, -1)
            w = (w - flat.mean(dim=1, keepdim=True).view(c, 1, 1, 1)) / (
                flat.std(dim=1, keepdim=True).view(c, 1, 1, 1) + 1e-5)
        return F.conv2d(x, w, self.sd.get(name + ".bias"), stride, padding, 1, x.shape[1] // w.shape[1])

    # -- stages ----------------------------------------------------------------------------
    def preprocess(self, rgb: np.ndarray):
        h, w = rgb.shape[:2]
        long_edge, short_edge = max(self.s["preprocess.max_size"]), min(self.s["preprocess.max_size"])
        factor = min(long_edge / max(h, w), short_edge / min(h, w))
        size = (int(w * factor + 0.5), int(h * factor + 0.5))
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # mmdetection loads BGR
        img = cv2.resize(bgr, size, interpolation=cv2.INTER_LINEAR)
        if self.s["preprocess.channel_order"] == "RGB":
            img = img[:, :, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()
        mean, std = (torch.tensor(self.s[f"preprocess.{k}"]).view(3, 1, 1) for k in ("mean", "std"))
        x = (x - mean) / std
        d = self.s["preprocess.size_divisor"]
        ph, pw = math.ceil(size[1] / d) * d, math.ceil(size[0] / d) * d
        x = F.pad(x, (0, pw - size[0], 0, ph - size[1]))[None]
        return x, (size[1], size[0]), (size[0] / w, size[1] / h)

    def backbone(self, x: Tensor) -> list[Tensor]:
        x = F.relu(self.gn(self.conv(x, "backbone.conv1", 2, 3), "backbone.gn1"), inplace=True)
        x = F.max_pool2d(x, 3, 2, 1)
        outs = []
        for stage, n in enumerate(self.blocks, start=1):
            for b in range(n):
                p = f"backbone.layer{stage}.{b}"
                stride = 2 if b == 0 and stage > 1 else 1
                y = F.relu(self.gn(self.conv(x, p + ".conv1"), p + ".gn1"), inplace=True)
                y = F.relu(self.gn(self.conv(y, p + ".conv2", stride, 1), p + ".gn2"), inplace=True)
                y = self.gn(self.conv(y, p + ".conv3"), p + ".gn3")
                if p + ".downsample.0.weight" in self.sd:
                    x = self.gn(self.conv(x, p + ".downsample.0", stride), p + ".downsample.1")
                x = F.relu(y + x, inplace=True)
            outs.append(x)
        return outs

    def neck(self, feats: list[Tensor]) -> list[Tensor]:
        lat = [self.gn(self.conv(f, f"neck.lateral_convs.{i}.conv"), f"neck.lateral_convs.{i}.gn")
               for i, f in enumerate(feats)]
        for i in (3, 2, 1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
        outs = [self.gn(self.conv(t, f"neck.fpn_convs.{i}.conv", 1, 1), f"neck.fpn_convs.{i}.gn")
                for i, t in enumerate(lat)]
        return outs + [F.max_pool2d(outs[-1], 1, 2)]

    @staticmethod
    def anchors(stride: int, h: int, w: int) -> Tensor:
        rows = []
        for ratio in (0.5, 1.0, 2.0):  # mmdetection: ratio-major, h_ratio = sqrt(ratio)
            hr = torch.sqrt(torch.tensor(ratio))
            aw, ah = stride * (1 / hr) * 8, stride * hr * 8
            rows.append(torch.stack([-0.5 * aw, -0.5 * ah, 0.5 * aw, 0.5 * ah]))
        base = torch.stack(rows)
        ys, xs = torch.meshgrid(torch.arange(h) * float(stride), torch.arange(w) * float(stride), indexing="ij")
        shift = torch.stack([xs, ys, xs, ys], -1).reshape(-1, 1, 4)
        return (shift + base[None]).reshape(-1, 4)

    @staticmethod
    def decode(priors: Tensor, deltas: Tensor, stds, shape) -> Tensor:
        d = deltas * torch.tensor(stds)
        cx, cy = (priors[:, 0] + priors[:, 2]) * 0.5, (priors[:, 1] + priors[:, 3]) * 0.5
        pw, ph = priors[:, 2] - priors[:, 0], priors[:, 3] - priors[:, 1]
        limit = abs(math.log(16 / 1000))
        gw, gh = pw * d[:, 2].clamp(-limit, limit).exp(), ph * d[:, 3].clamp(-limit, limit).exp()
        gx, gy = cx + pw * d[:, 0], cy + ph * d[:, 1]
        x1, x2 = (gx - gw * 0.5).clamp(0, shape[1]), (gx + gw * 0.5).clamp(0, shape[1])
        y1, y2 = (gy - gh * 0.5).clamp(0, shape[0]), (gy + gh * 0.5).clamp(0, shape[0])
        return torch.stack([x1, y1, x2, y2], 1)

    @staticmethod
    def group_nms(boxes: Tensor, scores: Tensor, ids: Tensor, iou: float) -> Tensor:
        """mmcv.ops.batched_nms: offset trick below 10000 boxes, else one NMS per id."""
        from torchvision.ops import nms  # torchvision's import (about 1.5 s) only when a reference runs

        if not len(boxes):
            return torch.zeros(0, dtype=torch.long)
        shifted = boxes + (ids.float() * (boxes.max() + 1))[:, None]
        if len(boxes) < 10000:
            return nms(shifted, scores, iou)
        keep = torch.cat([torch.nonzero(ids == i)[:, 0][nms(shifted[ids == i], scores[ids == i], iou)]
                          for i in ids.unique()])
        return keep[torch.argsort(scores[keep], descending=True, stable=False)]

    def rpn(self, feats: list[Tensor], shape):
        obj, reg, scores, deltas, priors, ids = [], [], [], [], [], []
        for lvl, (f, stride) in enumerate(zip(feats, STRIDES)):
            t = F.relu(self.conv(f, "rpn_head.rpn_conv", 1, 1), inplace=True)
            o, r = self.conv(t, "rpn_head.rpn_cls"), self.conv(t, "rpn_head.rpn_reg")
            obj.append(o)
            reg.append(r)
            s = o[0].permute(1, 2, 0).reshape(-1).sigmoid()
            d = r[0].permute(1, 2, 0).reshape(-1, 4)
            a = self.anchors(stride, o.shape[2], o.shape[3])
            n = int(self.s["rpn.pre_nms_top_n"])
            if 0 < n < len(s):
                s, idx = s.sort(descending=True)
                s, d, a = s[:n], d[idx[:n]], a[idx[:n]]
            scores.append(s)
            deltas.append(d)
            priors.append(a)
            ids.append(torch.full((len(s),), lvl))
        boxes = self.decode(torch.cat(priors), torch.cat(deltas), (1.0, 1.0, 1.0, 1.0), shape)
        scores, ids = torch.cat(scores), torch.cat(ids)
        wh = boxes[:, 2:] - boxes[:, :2]
        big = (wh > self.s["rpn.min_size"]).all(1)
        boxes, scores, ids = boxes[big], scores[big], ids[big]
        keep = self.group_nms(boxes, scores, ids, self.s["rpn.nms_iou"])[: int(self.s["rpn.post_nms_top_n"])]
        return obj, reg, boxes[keep], scores[keep]

    def roi_features(self, feats: list[Tensor], boxes: Tensor, size: int) -> Tensor:
        # torchvision (slow to import) only when the reference runs
        from torchvision.ops import roi_align

        rois = torch.cat([torch.zeros(len(boxes), 1), boxes], 1)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        level = torch.floor(torch.log2(torch.sqrt(area) / 56 + 1e-6)).clamp(0, 3).long()
        out = torch.zeros(len(boxes), 256, size, size)
        for lvl in range(4):
            sel = level == lvl
            if sel.any():
                out[sel] = roi_align(feats[lvl], rois[sel], size, 1 / STRIDES[lvl], 0, True)
        return out

    def four_convs(self, x: Tensor, prefix: str) -> Tensor:
        for i in range(4):
            x = F.relu(self.gn(self.conv(x, f"{prefix}.{i}.conv", 1, 1), f"{prefix}.{i}.gn"), inplace=True)
        return x

    def bbox_head(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.head + "bbox_head"
        x = self.four_convs(x, h + ".shared_convs").flatten(1)
        x = F.relu(F.linear(x, self.sd[h + ".shared_fcs.0.weight"], self.sd[h + ".shared_fcs.0.bias"]), inplace=True)
        cls = F.linear(x, self.sd[h + ".fc_cls.weight"], self.sd[h + ".fc_cls.bias"])
        reg = F.linear(x, self.sd[h + ".fc_reg.weight"], self.sd[h + ".fc_reg.bias"])
        if self.old:  # 1.x: background first, and a background box: into gnhub's convention
            cls, reg = torch.cat([cls[:, 1:], cls[:, :1]], 1), reg[:, 4:]
        return cls, reg

    def mask_head(self, x: Tensor) -> Tensor:
        h = self.head + "mask_head"
        x = self.four_convs(x, h + ".convs")
        x = F.conv_transpose2d(x, self.sd[h + ".upsample.weight"], self.sd[h + ".upsample.bias"], 2)
        x = F.relu(x, inplace=True)
        logits = self.conv(x, h + ".conv_logits")
        return logits[:, 1:] if self.old else logits

    def detect(self, cls: Tensor, reg: Tensor, proposals: Tensor, shape, factors):
        """Without a mask head (StandardRoIHead's bbox_rescale) boxes are scaled to the original
        image before NMS, by scale_boxes: times float32(1 / factor)."""
        k = cls.shape[1] - 1
        probs = cls.softmax(1)[:, :k]
        boxes = self.decode(proposals[:, None].expand(-1, k, 4).reshape(-1, 4), reg.reshape(-1, 4),
                            (0.1, 0.1, 0.2, 0.2), shape)
        if not self.masks:
            sw, sh = factors
            boxes = boxes * torch.tensor([1 / sw, 1 / sh], dtype=torch.float32).repeat((1, 2))
        labels = torch.arange(k).repeat(len(proposals))
        probs = probs.reshape(-1)
        ok = probs > self.s["roi_heads.score_thresh"]
        boxes, probs, labels = boxes[ok], probs[ok], labels[ok]
        keep = self.group_nms(boxes, probs, labels, self.s["roi_heads.nms_iou"])
        keep = keep[: int(self.s["roi_heads.detections_per_image"])]
        return boxes[keep], probs[keep], labels[keep]

    @staticmethod
    def paste(prob: Tensor, box: Tensor, h: int, w: int) -> Tensor:
        x0, y0, x1, y1 = box.tolist()
        xs = (torch.arange(w, dtype=torch.float32) + 0.5 - box[0]) / (box[2] - box[0]) * 2 - 1
        ys = (torch.arange(h, dtype=torch.float32) + 0.5 - box[1]) / (box[3] - box[1]) * 2 - 1
        xs, ys = torch.nan_to_num(xs, posinf=0.0, neginf=0.0), torch.nan_to_num(ys, posinf=0.0, neginf=0.0)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)[None]
        return F.grid_sample(prob[None, None], grid, align_corners=False)[0, 0]

    @torch.inference_mode()
    def __call__(self, rgb: np.ndarray) -> dict[str, Tensor]:
        x, shape, (sw, sh) = self.preprocess(rgb)
        c = self.backbone(x)
        p = self.neck(c)
        obj, reg, proposals, scores = self.rpn(p, shape)
        cls, deltas = self.bbox_head(self.roi_features(p, proposals, 7))
        boxes, det_scores, labels = self.detect(cls, deltas, proposals, shape, (sw, sh))
        out = {S.INPUT: x, S.PROPOSALS: proposals, S.PROPOSAL_SCORES: scores, S.ROI_CLS_LOGITS: cls,
               S.ROI_BOX_DELTAS: deltas, S.SCORES: det_scores, S.LABELS: labels}
        if self.masks:
            out[S.MASK_LOGITS] = self.mask_head(self.roi_features(p, boxes, 14))[torch.arange(len(boxes)), labels]
        if self.masks:  # FCNMaskHead divides by the scale factor
            boxes = boxes / torch.tensor([sw, sh, sw, sh], dtype=torch.float32)
        out[S.BOXES] = boxes
        if self.masks:
            h, w = rgb.shape[:2]
            thr = self.s["roi_heads.mask_threshold"]
            out[S.MASKS] = torch.stack([self.paste(m.sigmoid(), b, h, w) >= thr for m, b in
                                        zip(out[S.MASK_LOGITS], boxes)]) if len(boxes) else \
                torch.zeros(0, h, w, dtype=torch.bool)
        out.update(S.pyramid(c, p, obj, reg))
        return out
