"""An independent forward of Detectron's GN Mask R-CNN (and GN ResNet classifier), written
against the blob names of a Detectron .pkl.

It follows Detectron's test path (utils/blob.py, ops/generate_proposals.py, ops/collect_and_
distribute_fpn_rpn_proposals.py, core/test.py, utils/boxes.py) in numpy, with torch and
torchvision only for convolutions, GroupNorm and RoIAlign (Caffe2's RoIAlign is torchvision's
with aligned=False); it shares no code with gnhub's model (tests/test_frameworks.py holds it to
importing nothing of gnhub.modeling). Outputs use gnhub's stage names and class convention
(background last), so `gnhub verify` can compare the two.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BBOX_XFORM_CLIP", "DetectronReference"]

BBOX_XFORM_CLIP = float(np.log(1000.0 / 16.0))


class DetectronReference:
    def __init__(self, blobs: dict[str, Tensor], settings: dict):
        """`settings`: converters.detectron's (mean, max_size, rpn.*, roi.*, crop_size ...)."""
        self.b = {k: v.float() for k, v in blobs.items() if isinstance(v, Tensor)}
        self.s = settings
        self.classifier = "pred_w" in self.b and "fpn_inner_res5_2_sum_w" not in self.b
        self.blocks = [len({k.split("_")[1] for k in self.b if k.startswith(f"res{n}_") and "branch2a_w" in k})
                       for n in range(2, 6)]

    # -- layers ----------------------------------------------------------------------------
    def conv_gn(self, x: Tensor, name: str, stride=1, pad=0, relu=True) -> Tensor:
        x = F.conv2d(x, self.b[name + "_w"], None, stride, pad)
        x = F.group_norm(x, 32, self.b[name + "_gn_s"], self.b[name + "_gn_b"], 1e-5)
        return F.relu(x, inplace=True) if relu else x

    def conv(self, x: Tensor, name: str, pad=0) -> Tensor:
        return F.conv2d(x, self.b[name + "_w"], self.b[name + "_b"], 1, pad)

    # -- image -> blob (utils/blob.py) ------------------------------------------------------
    def blob(self, rgb: np.ndarray):
        im = rgb[:, :, ::-1].astype(np.float32)  # Detectron reads BGR with cv2.imread
        im = (im - np.array(self.s["preprocess.mean"], dtype=np.float64)).astype(np.float32)
        short, long = min(self.s["preprocess.max_size"]), max(self.s["preprocess.max_size"])
        size_min, size_max = min(im.shape[:2]), max(im.shape[:2])
        scale = float(short) / float(size_min)
        crop = self.s.get("preprocess.crop_size", 0)
        if not crop and np.round(scale * size_max) > long:
            scale = float(long) / float(size_max)
        im = cv2.resize(im, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        if crop:
            top, left = (im.shape[0] - crop) // 2, (im.shape[1] - crop) // 2
            im = im[top: top + crop, left: left + crop]
        stride = self.s["preprocess.size_divisor"]
        h, w = int(np.ceil(im.shape[0] / stride) * stride), int(np.ceil(im.shape[1] / stride) * stride)
        blob = np.zeros((h, w, 3), dtype=np.float32)
        blob[: im.shape[0], : im.shape[1]] = im
        return torch.from_numpy(blob.transpose(2, 0, 1).copy())[None], scale

    # -- body ------------------------------------------------------------------------------
    def body(self, x: Tensor) -> list[Tensor]:
        x = F.max_pool2d(self.conv_gn(x, "conv1", 2, 3), 3, 2, 1)
        outs = []
        for stage, n in zip(range(2, 6), self.blocks):
            for i in range(n):
                p = f"res{stage}_{i}"
                stride = 2 if i == 0 and stage > 2 else 1  # STRIDE_1X1: False: the 3x3 strides
                y = self.conv_gn(x, p + "_branch2a")
                y = self.conv_gn(y, p + "_branch2b", stride, 1)
                y = self.conv_gn(y, p + "_branch2c", relu=False)
                sc = self.conv_gn(x, p + "_branch1", stride, relu=False) if p + "_branch1_w" in self.b else x
                x = F.relu(y + sc, inplace=True)
            outs.append(x)
        return outs

    def fpn(self, c: list[Tensor]) -> list[Tensor]:
        last = [f"res{s}_{n - 1}_sum" for s, n in zip(range(2, 6), self.blocks)]
        inner = self.conv_gn(c[3], "fpn_inner_" + last[3], relu=False)
        inners = [inner]
        for i in (2, 1, 0):
            lateral = self.conv_gn(c[i], f"fpn_inner_{last[i]}_lateral", relu=False)
            inner = lateral + F.interpolate(inner, scale_factor=2, mode="nearest")
            inners.insert(0, inner)
        outs = [self.conv_gn(t, "fpn_" + name, 1, 1, relu=False) for t, name in zip(inners, last)]
        return outs + [F.max_pool2d(outs[-1], 1, 2, 0)]

    # -- RPN (ops/generate_proposals.py, collect_and_distribute_fpn_rpn_proposals.py) -------
    @staticmethod
    def anchors(stride: int, size: int) -> np.ndarray:
        """modeling/generate_anchors.py for one size and aspect ratios (0.5, 1, 2)."""
        def whctrs(a):
            w, h = a[2] - a[0] + 1, a[3] - a[1] + 1
            return w, h, a[0] + 0.5 * (w - 1), a[1] + 0.5 * (h - 1)

        def mk(ws, hs, x, y):
            ws, hs = ws[:, None], hs[:, None]
            return np.hstack((x - 0.5 * (ws - 1), y - 0.5 * (hs - 1), x + 0.5 * (ws - 1), y + 0.5 * (hs - 1)))

        base = np.array([1, 1, stride, stride], dtype=float) - 1
        w, h, x, y = whctrs(base)
        ratios = np.array([0.5, 1, 2], dtype=float)
        ws = np.round(np.sqrt(w * h / ratios))
        hs = np.round(ws * ratios)
        out = []
        for a in mk(ws, hs, x, y):
            w, h, x, y = whctrs(a)
            scale = np.array([size / stride], dtype=float)
            out.append(mk(w * scale, h * scale, x, y))
        return np.vstack(out)

    @staticmethod
    def bbox_transform(boxes: np.ndarray, deltas: np.ndarray, weights) -> np.ndarray:
        boxes = boxes.astype(deltas.dtype, copy=False)
        widths = boxes[:, 2] - boxes[:, 0] + 1.0
        heights = boxes[:, 3] - boxes[:, 1] + 1.0
        ctr_x, ctr_y = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
        wx, wy, ww, wh = weights
        dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
        dw = np.minimum(deltas[:, 2::4] / ww, np.float32(BBOX_XFORM_CLIP))
        dh = np.minimum(deltas[:, 3::4] / wh, np.float32(BBOX_XFORM_CLIP))
        px, py = dx * widths[:, None] + ctr_x[:, None], dy * heights[:, None] + ctr_y[:, None]
        pw, ph = np.exp(dw) * widths[:, None], np.exp(dh) * heights[:, None]
        out = np.zeros(deltas.shape, dtype=deltas.dtype)
        out[:, 0::4], out[:, 1::4] = px - 0.5 * pw, py - 0.5 * ph
        out[:, 2::4], out[:, 3::4] = px + 0.5 * pw - 1, py + 0.5 * ph - 1
        return out

    @staticmethod
    def clip(boxes: np.ndarray, h, w) -> np.ndarray:
        boxes[:, 0::4] = np.maximum(np.minimum(boxes[:, 0::4], w - 1), 0)
        boxes[:, 1::4] = np.maximum(np.minimum(boxes[:, 1::4], h - 1), 0)
        boxes[:, 2::4] = np.maximum(np.minimum(boxes[:, 2::4], w - 1), 0)
        boxes[:, 3::4] = np.maximum(np.minimum(boxes[:, 3::4], h - 1), 0)
        return boxes

    @staticmethod
    def nms(dets: np.ndarray, thresh: float) -> np.ndarray:
        """utils/cython_nms.pyx in float32, kept indices in index order (ties: lower index first)."""
        x1, y1, x2, y2, scores = (dets[:, i].astype(np.float32) for i in range(5))
        areas = (x2 - x1 + np.float32(1)) * (y2 - y1 + np.float32(1))
        order = np.argsort(-scores, kind="stable")
        suppressed = np.zeros(len(dets), dtype=bool)
        thresh = np.float32(thresh)
        for _i, i in enumerate(order):
            if suppressed[i]:
                continue
            j = order[_i + 1:]
            w = np.maximum(np.float32(0), np.minimum(x2[i], x2[j]) - np.maximum(x1[i], x1[j]) + np.float32(1))
            h = np.maximum(np.float32(0), np.minimum(y2[i], y2[j]) - np.maximum(y1[i], y1[j]) + np.float32(1))
            inter = w * h
            suppressed[j[inter / (areas[i] + areas[j] - inter) >= thresh]] = True
        return np.where(~suppressed)[0]

    def rpn(self, p: list[Tensor], im_info):
        height, width, scale = im_info
        rois, probs, objs, regs = [], [], [], []
        for lvl, f in zip(range(2, 7), p):
            t = F.relu(self.conv(f, "conv_rpn_fpn2", 1), inplace=True)
            o, r = self.conv(t, "rpn_cls_logits_fpn2"), self.conv(t, "rpn_bbox_pred_fpn2")
            objs.append(o)
            regs.append(r)
            stride = 2 ** lvl
            anchors = self.anchors(stride, 32 * 2 ** (lvl - 2))
            hh, ww = o.shape[-2:]
            sx, sy = np.meshgrid(np.arange(ww) * stride, np.arange(hh) * stride)
            shifts = np.vstack((sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel())).transpose()
            all_anchors = (anchors[None] + shifts[:, None]).reshape(-1, 4)
            deltas = r[0].numpy().transpose(1, 2, 0).reshape(-1, 4)
            scores = torch.sigmoid(o)[0].numpy().transpose(1, 2, 0).reshape(-1)
            top = int(self.s["rpn.pre_nms_top_n"])
            order = np.argsort(-scores, kind="stable")
            if 0 < top < len(scores):
                order = order[:top]
            deltas, all_anchors, scores = deltas[order], all_anchors[order], scores[order]
            props = self.clip(self.bbox_transform(all_anchors, deltas, (1.0, 1.0, 1.0, 1.0)), height, width)
            ws_orig = (props[:, 2] - props[:, 0]) / scale + 1
            hs_orig = (props[:, 3] - props[:, 1]) / scale + 1
            ws, hs = props[:, 2] - props[:, 0] + 1, props[:, 3] - props[:, 1] + 1
            least = np.maximum(self.s["rpn.min_size"], 1)
            keep = np.where((ws_orig >= least) & (hs_orig >= least) & (props[:, 0] + ws / 2.0 < width)
                            & (props[:, 1] + hs / 2.0 < height))[0]
            props, scores = props[keep], scores[keep]
            keep = self.nms(np.hstack((props, scores[:, None])), self.s["rpn.nms_iou"])
            keep = keep[: int(self.s["rpn.post_nms_top_n"])]
            rois.append(props[keep])
            probs.append(scores[keep])
        rois, probs = np.concatenate(rois), np.concatenate(probs)
        inds = np.argsort(-probs, kind="stable")[: int(self.s["rpn.post_nms_top_n"])]
        return objs, regs, rois[inds], probs[inds]

    # -- RoI heads -------------------------------------------------------------------------
    @staticmethod
    def levels(rois: np.ndarray) -> np.ndarray:
        """modeling/FPN.py map_rois_to_fpn_levels with canonical scale 224 at level 4, levels 2-5.
        Detectron asserts on a negative area (a sub-pixel box scaled up); here it counts as 0."""
        s = np.sqrt(np.maximum((rois[:, 2] - rois[:, 0] + 1) * (rois[:, 3] - rois[:, 1] + 1), 0))
        return np.clip(np.floor(4 + np.log2(s / 224 + np.float32(1e-6))), 2, 5).astype(int)

    def roi_transform(self, p: list[Tensor], rois: np.ndarray, size: int) -> Tensor:
        from torchvision.ops import roi_align  # torchvision's import (about 1.5 s) only when a reference runs

        lvls = self.levels(rois)
        out = torch.zeros(len(rois), p[0].shape[1], size, size)
        boxes = torch.from_numpy(np.hstack((np.zeros((len(rois), 1), np.float32), rois)).astype(np.float32))
        for lvl in range(2, 6):
            sel = torch.from_numpy(lvls == lvl)
            if sel.any():
                ratio = int(self.s["roi_heads.sampling_ratio"])
                out[sel] = roi_align(p[lvl - 2], boxes[sel], size, 1.0 / 2**lvl, ratio, aligned=False)
        return out

    def box_head(self, x: Tensor):
        for n in range(1, 5):
            x = self.conv_gn(x, f"head_conv{n}", 1, 1)
        x = F.relu(F.linear(x.flatten(1), self.b["fc6_w"], self.b["fc6_b"]), inplace=True)
        cls = F.linear(x, self.b["cls_score_w"], self.b["cls_score_b"])
        return cls, F.linear(x, self.b["bbox_pred_w"], self.b["bbox_pred_b"])

    def mask_head(self, x: Tensor) -> Tensor:
        prefix = "_mask_fcn" if "_mask_fcn1_w" in self.b else "_[mask]_fcn"  # GN head's names, or older heads'
        for n in range(1, 5):
            x = self.conv_gn(x, f"{prefix}{n}", 1, 1)
        x = F.relu(F.conv_transpose2d(x, self.b["conv5_mask_w"], self.b["conv5_mask_b"], 2), inplace=True)
        return self.conv(x, "mask_fcn_logits")

    def detections(self, scores: np.ndarray, boxes: np.ndarray):
        """core/test.py box_results_with_nms_and_limit: (boxes, scores, labels 0-based), class-major."""
        cls_boxes = []
        for j in range(1, scores.shape[1]):
            inds = np.where(scores[:, j] > self.s["roi_heads.score_thresh"])[0]
            dets = np.hstack((boxes[inds, j * 4:(j + 1) * 4], scores[inds, j][:, None])).astype(np.float32)
            cls_boxes.append(dets[self.nms(dets, self.s["roi_heads.nms_iou"])] if len(dets) else dets)
        limit = int(self.s["roi_heads.detections_per_image"])
        image_scores = np.hstack([d[:, -1] for d in cls_boxes])
        if len(image_scores) > limit:
            thresh = np.sort(image_scores)[-limit]
            cls_boxes = [d[d[:, -1] >= thresh] for d in cls_boxes]
        labels = np.concatenate([np.full(len(d), j) for j, d in enumerate(cls_boxes)])
        res = np.vstack(cls_boxes)
        return res[:, :4], res[:, 4], labels

    def segms(self, masks: np.ndarray, boxes: np.ndarray, h: int, w: int) -> np.ndarray:
        """core/test.py segm_results: (D, H, W) bool."""
        m = masks.shape[-1]
        wh, hh = (boxes[:, 2] - boxes[:, 0]) * 0.5, (boxes[:, 3] - boxes[:, 1]) * 0.5
        xc, yc = (boxes[:, 2] + boxes[:, 0]) * 0.5, (boxes[:, 3] + boxes[:, 1]) * 0.5
        wh, hh = wh * ((m + 2.0) / m), hh * ((m + 2.0) / m)
        ref = np.zeros(boxes.shape)
        ref[:, 0], ref[:, 2], ref[:, 1], ref[:, 3] = xc - wh, xc + wh, yc - hh, yc + hh
        ref = ref.astype(np.int32)
        padded = np.zeros((m + 2, m + 2), dtype=np.float32)
        out = np.zeros((len(masks), h, w), dtype=bool)
        for i, (mask, box) in enumerate(zip(masks, ref)):
            padded[1:-1, 1:-1] = mask
            bw, bh = max(box[2] - box[0] + 1, 1), max(box[3] - box[1] + 1, 1)
            resized = cv2.resize(padded, (int(bw), int(bh))) > self.s["roi_heads.mask_threshold"]
            x0, x1, y0, y1 = max(box[0], 0), min(box[2] + 1, w), max(box[1], 0), min(box[3] + 1, h)
            if x0 < x1 and y0 < y1:
                out[i, y0:y1, x0:x1] = resized[y0 - box[1]:y1 - box[1], x0 - box[0]:x1 - box[0]]
        return out

    # -- the whole test path ---------------------------------------------------------------
    @torch.inference_mode()
    def __call__(self, rgb: np.ndarray) -> dict[str, Tensor]:
        x, scale = self.blob(rgb)
        c = self.body(x)
        out = {"input": x, **{f"backbone.c{i + 2}": t for i, t in enumerate(c)}}
        if self.classifier:
            out["logits"] = F.linear(F.adaptive_avg_pool2d(c[-1], 1).flatten(1), self.b["pred_w"], self.b["pred_b"])
            return out
        p = self.fpn(c)
        im_info = (x.shape[2], x.shape[3], np.float32(scale))  # the padded blob's size, as Detectron
        objs, regs, rois, probs = self.rpn(p, im_info)
        cls, deltas = self.box_head(self.roi_transform(p, rois, 7))
        scores = torch.softmax(cls, 1).numpy()
        h, w = rgb.shape[:2]
        weights = tuple(1.0 / s for s in self.s["roi_heads.box_stds"])  # MODEL.BBOX_REG_WEIGHTS
        pred = self.clip(self.bbox_transform(rois / np.float32(scale), deltas.numpy(), weights), h, w)
        boxes, det_scores, labels = self.detections(scores, pred)
        order = np.argsort(-det_scores, kind="stable")
        boxes, det_scores, labels = boxes[order], det_scores[order], labels[order]
        mask_rois = (boxes.astype(np.float64) * scale).astype(np.float32)
        classes = len(self.b["mask_fcn_logits_b"])
        logits = self.mask_head(self.roi_transform(p, mask_rois, 14)) if len(boxes) else torch.zeros(0, classes, 28, 28)
        logits = logits[torch.arange(len(boxes)), torch.from_numpy(labels + 1)]
        masks = self.segms(torch.sigmoid(logits).numpy(), boxes, h, w)
        out.update({f"fpn.p{i + 2}": t for i, t in enumerate(p)})
        out.update({f"rpn.objectness.p{i + 2}": t for i, t in enumerate(objs)})
        out.update({f"rpn.deltas.p{i + 2}": t for i, t in enumerate(regs)})
        out.update({
            "proposals": torch.from_numpy(rois), "proposal_scores": torch.from_numpy(probs),
            "roi.cls_logits": torch.cat([cls[:, 1:], cls[:, :1]], 1), "roi.box_deltas": deltas[:, 4:],
            "boxes": torch.from_numpy(boxes.astype(np.float32)), "scores": torch.from_numpy(det_scores),
            "labels": torch.from_numpy(labels.astype(np.int64)), "mask_logits": logits,
            "masks": torch.from_numpy(masks),
        })
        return out
