"""An independent forward of detectron2's GN Mask R-CNN (GeneralizedRCNN, GN ResNet-FPN; or FrozenBN
ResNeXt with deformable stages, a plain FPN and cascade GN heads; PanopticFPN: its semantic FPN head and
the panoptic merge beside them), written against the parameter names of a detectron2 checkpoint.

It follows detectron2's DefaultPredictor step by step (data/transforms ResizeShortestEdge,
modeling/backbone/resnet.py (DeformBottleneckBlock, layers/deform_conv.py on a CPU) and fpn.py,
layers/batch_norm.py (FrozenBatchNorm2d), anchor_generator.py, box_regression.py,
proposal_generator/proposal_utils.py, poolers.py, roi_heads/fast_rcnn.py, cascade_rcnn.py and
mask_head.py, postprocessing.py, layers/mask_ops.py; meta_arch/semantic_seg.py and panoptic_fpn.py) with
plain torch, Pillow and torchvision.ops (its batched_nms and roi_align, as detectron2 calls them); it
shares no code with gnhub's model.
Outputs use gnhub's stage names (proposal scores are detectron2's objectness logits), so
`gnhub verify` can compare the two.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .. import stages as S

__all__ = ["Detectron2Reference", "SCALE_CLAMP"]

SCALE_CLAMP = math.log(1000.0 / 16)


class Detectron2Reference:
    def __init__(self, state_dict: dict[str, Tensor], settings: dict):
        """`settings` by config path: preprocess.*, rpn.*, roi_heads.* (converters.detectron2 and the zoo)."""
        # contiguous, as detectron2's checkpointer copies the arrays into its parameters
        self.sd = {k: v.float().contiguous() for k, v in state_dict.items() if isinstance(v, Tensor)}
        self.s = settings
        self.blocks = [len({k.split(".")[3] for k in self.sd if k.startswith(f"backbone.bottom_up.res{n}.")})
                       for n in range(2, 6)]
        self.masks = any(k.startswith("roi_heads.mask_head.") for k in self.sd)
        self.semantic = "sem_seg_head.predictor.weight" in self.sd  # PanopticFPN
        # CascadeROIHeads: box_head.0, box_predictor.0, ... (a StandardROIHeads' has no stage number)
        self.stages = len({k.split(".")[2] for k in self.sd if k.startswith("roi_heads.box_predictor.")
                           and k.split(".")[2].isdigit()})

    # -- layers ----------------------------------------------------------------------------
    def conv(self, x: Tensor, name: str, stride=1, padding=0, relu=False) -> Tensor:
        """detectron2's Conv2d (grouped as its weight says: ResNeXt), its `norm` submodule where it has
        one, its activation."""
        w = self.sd[name + ".weight"]
        x = F.conv2d(x, w, self.sd.get(name + ".bias"), stride, padding, 1, x.shape[1] // w.shape[1])
        return self.norm_act(x, name, relu)

    def norm_act(self, x: Tensor, name: str, relu: bool) -> Tensor:
        """The `norm` of Conv2d `name`: FrozenBatchNorm2d (F.batch_norm at inference), GroupNorm (32
        groups), or none; then ReLU where asked."""
        if name + ".norm.running_var" in self.sd:
            x = F.batch_norm(x, self.sd[name + ".norm.running_mean"], self.sd[name + ".norm.running_var"],
                             self.sd[name + ".norm.weight"], self.sd[name + ".norm.bias"], False, 0.0, 1e-5)
        elif name + ".norm.weight" in self.sd:
            x = F.group_norm(x, 32, self.sd[name + ".norm.weight"], self.sd[name + ".norm.bias"], 1e-5)
        return F.relu_(x) if relu else x

    # -- DefaultPredictor: BGR in, ResizeShortestEdge, normalise, pad -----------------------
    def preprocess(self, rgb: np.ndarray):
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # DefaultPredictor is given BGR (cv2.imread)
        if self.s["preprocess.channel_order"] == "RGB":
            bgr = bgr[:, :, ::-1]
        h, w = bgr.shape[:2]
        size, max_size = min(self.s["preprocess.max_size"]), max(self.s["preprocess.max_size"])
        scale = size * 1.0 / min(h, w)
        newh, neww = (size * 1.0, scale * w) if h < w else (scale * h, size * 1.0)
        if max(newh, neww) > max_size:
            scale = max_size * 1.0 / max(newh, neww)
            newh, neww = newh * scale, neww * scale
        newh, neww = int(newh + 0.5), int(neww + 0.5)
        image = np.asarray(Image.fromarray(np.ascontiguousarray(bgr)).resize((neww, newh), Image.BILINEAR))
        x = torch.as_tensor(image.astype("float32").transpose(2, 0, 1))
        mean = torch.tensor(self.s["preprocess.mean"]).view(-1, 1, 1)
        std = torch.tensor(self.s["preprocess.std"]).view(-1, 1, 1)
        x = (x - mean) / std
        d = self.s["preprocess.size_divisor"]
        ph, pw = (newh + d - 1) // d * d, (neww + d - 1) // d * d
        return F.pad(x, [0, pw - neww, 0, ph - newh], value=0.0)[None], (newh, neww)

    # -- backbone: ResNet (GN, stride in the 3x3) and FPN -----------------------------------
    def resnet(self, x: Tensor) -> list[Tensor]:
        x = self.conv(x, "backbone.bottom_up.stem.conv1", 2, 3, relu=True)
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        outs = []
        for stage, n in zip(range(2, 6), self.blocks):
            for i in range(n):
                p = f"backbone.bottom_up.res{stage}.{i}"
                stride = 2 if i == 0 and stage > 2 else 1
                out = self.conv(x, p + ".conv1", relu=True)
                if p + ".conv2_offset.weight" in self.sd:  # DeformBottleneckBlock: DeformConv, torchvision's on a CPU
                    from torchvision.ops import deform_conv2d  # torchvision (slow to import) only when it runs

                    offset = self.conv(out, p + ".conv2_offset", stride, 1)
                    out = deform_conv2d(out, offset, self.sd[p + ".conv2.weight"], stride=stride, padding=1)
                    out = self.norm_act(out, p + ".conv2", relu=True)
                else:
                    out = self.conv(out, p + ".conv2", stride, 1, relu=True)
                out = self.conv(out, p + ".conv3")
                shortcut = self.conv(x, p + ".shortcut", stride) if p + ".shortcut.weight" in self.sd else x
                x = F.relu_(out + shortcut)
            outs.append(x)
        return outs

    def fpn(self, c: list[Tensor]) -> list[Tensor]:
        prev = self.conv(c[3], "backbone.fpn_lateral5")
        results = [self.conv(prev, "backbone.fpn_output5", 1, 1)]
        for level, feature in zip((4, 3, 2), (c[2], c[1], c[0])):
            top_down = F.interpolate(prev, scale_factor=2.0, mode="nearest")
            prev = self.conv(feature, f"backbone.fpn_lateral{level}") + top_down
            results.insert(0, self.conv(prev, f"backbone.fpn_output{level}", 1, 1))
        return results + [F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0)]

    # -- RPN ---------------------------------------------------------------------------------
    @staticmethod
    def cell_anchors(size: float) -> Tensor:
        anchors = []
        for ratio in (0.5, 1.0, 2.0):
            w = math.sqrt(size**2.0 / ratio)
            h = ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
        return torch.tensor(anchors).float()

    @staticmethod
    def apply_deltas(deltas: Tensor, boxes: Tensor, weights) -> Tensor:
        deltas = deltas.float()
        boxes = boxes.to(deltas.dtype)
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        ctr_x, ctr_y = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
        wx, wy, ww, wh = weights
        dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
        dw = torch.clamp(deltas[:, 2::4] / ww, max=SCALE_CLAMP)
        dh = torch.clamp(deltas[:, 3::4] / wh, max=SCALE_CLAMP)
        pred_ctr_x, pred_ctr_y = dx * widths[:, None] + ctr_x[:, None], dy * heights[:, None] + ctr_y[:, None]
        pred_w, pred_h = torch.exp(dw) * widths[:, None], torch.exp(dh) * heights[:, None]
        pred = torch.stack((pred_ctr_x - 0.5 * pred_w, pred_ctr_y - 0.5 * pred_h, pred_ctr_x + 0.5 * pred_w,
                            pred_ctr_y + 0.5 * pred_h), dim=-1)
        return pred.reshape(deltas.shape)

    @staticmethod
    def clip(boxes: Tensor, h, w) -> Tensor:
        return torch.stack((boxes[:, 0].clamp(min=0, max=w), boxes[:, 1].clamp(min=0, max=h),
                            boxes[:, 2].clamp(min=0, max=w), boxes[:, 3].clamp(min=0, max=h)), dim=-1)

    def rpn(self, p: list[Tensor], image_size):
        # torchvision (slow to import) only when the reference runs
        from torchvision.ops import batched_nms

        logits, deltas, scores, proposals, level_ids = [], [], [], [], []
        for lvl, f in enumerate(p):
            stride = 4 * 2**lvl
            t = F.relu(self.conv(f, "proposal_generator.rpn_head.conv", 1, 1))
            o = self.conv(t, "proposal_generator.rpn_head.objectness_logits")
            d = self.conv(t, "proposal_generator.rpn_head.anchor_deltas")
            logits.append(o)
            deltas.append(d)
            hh, ww = o.shape[-2:]
            shift_y, shift_x = torch.meshgrid(torch.arange(0, hh * stride, stride, dtype=torch.float32),
                                              torch.arange(0, ww * stride, stride, dtype=torch.float32), indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            anchors = (shifts.view(-1, 1, 4) + self.cell_anchors(8.0 * stride).view(1, -1, 4)).reshape(-1, 4)
            pred_logits = o.permute(0, 2, 3, 1).flatten(1)
            pred_deltas = d.view(1, -1, 4, hh, ww).permute(0, 3, 4, 1, 2).flatten(1, -2)
            props = self.apply_deltas(pred_deltas.view(-1, 4), anchors, (1.0, 1.0, 1.0, 1.0)).view(1, -1, 4)
            k = min(pred_logits.shape[1], int(self.s["rpn.pre_nms_top_n"]))
            top_scores, top_idx = pred_logits.topk(k, dim=1)
            scores.append(top_scores)
            proposals.append(props[torch.arange(1)[:, None], top_idx])
            level_ids.append(torch.full((k,), lvl, dtype=torch.int64))
        scores, boxes, lvls = torch.cat(scores, 1)[0], torch.cat(proposals, 1)[0], torch.cat(level_ids)
        valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        boxes, scores, lvls = boxes[valid], scores[valid], lvls[valid]
        boxes = self.clip(boxes, *image_size)
        keep = ((boxes[:, 2] - boxes[:, 0]) > self.s["rpn.min_size"]) & ((boxes[:, 3] - boxes[:, 1]) >
                                                                          self.s["rpn.min_size"])
        boxes, scores, lvls = boxes[keep], scores[keep], lvls[keep]
        keep = batched_nms(boxes.float(), scores, lvls, self.s["rpn.nms_iou"])[: int(self.s["rpn.post_nms_top_n"])]
        return logits, deltas, boxes[keep], scores[keep]

    # -- RoI heads ---------------------------------------------------------------------------
    def pool(self, p: list[Tensor], boxes: Tensor, size: int) -> Tensor:
        # torchvision (slow to import) only when the reference runs
        from torchvision.ops import roi_align

        rois = torch.cat([torch.zeros(len(boxes), 1), boxes], dim=1)
        box_sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        levels = torch.floor(4 + torch.log2(box_sizes / 224 + 1e-8))
        levels = torch.clamp(levels, min=2, max=5).to(torch.int64) - 2
        out = torch.zeros(len(boxes), p[0].shape[1], size, size)
        for level in range(4):
            inds = torch.nonzero(levels == level, as_tuple=True)[0]
            out.index_put_((inds,), roi_align(p[level], rois[inds], (size, size), 1.0 / 2 ** (level + 2),
                                              int(self.s["roi_heads.sampling_ratio"]), True))
        return out

    def convs(self, prefix: str) -> int:
        return len([k for k in self.sd if k.startswith(prefix) and k.endswith(".weight") and ".norm." not in k])

    def box_head(self, x: Tensor, stage: str = "") -> tuple[Tensor, Tensor]:
        """FastRCNNConvFCHead and FastRCNNOutputLayers (of cascade stage `stage`: ".0", ...)."""
        head, predictor = f"roi_heads.box_head{stage}", f"roi_heads.box_predictor{stage}"
        for n in range(1, self.convs(f"{head}.conv") + 1):
            x = self.conv(x, f"{head}.conv{n}", 1, 1, relu=True)
        x = x.flatten(1)
        for n in range(1, self.convs(f"{head}.fc") + 1):
            x = F.relu(F.linear(x, self.sd[f"{head}.fc{n}.weight"], self.sd[f"{head}.fc{n}.bias"]))
        cls = F.linear(x, self.sd[f"{predictor}.cls_score.weight"], self.sd[f"{predictor}.cls_score.bias"])
        return cls, F.linear(x, self.sd[f"{predictor}.bbox_pred.weight"], self.sd[f"{predictor}.bbox_pred.bias"])

    def cascade(self, p: list[Tensor], proposals: Tensor, image_size):
        """CascadeROIHeads._forward_box at test time: each stage on the previous stage's boxes
        (predict_boxes, clipped), softmax scores averaged over the stages -> (the first stage's
        logits and deltas, the scores, the last stage's boxes)."""
        weights = self.weights()
        cls, deltas = first = self.box_head(self.pool(p, proposals, 7), ".0")
        probs = [F.softmax(cls, dim=-1)]
        for k in range(1, self.stages):
            proposals = self.clip(self.apply_deltas(deltas, proposals, weights[k - 1]), *image_size)
            cls, deltas = self.box_head(self.pool(p, proposals, 7), f".{k}")
            probs.append(F.softmax(cls, dim=-1))
        scores = sum(probs) * (1.0 / self.stages)
        return *first, scores, self.apply_deltas(deltas, proposals, weights[-1])

    def weights(self) -> list[tuple[float, ...]]:
        """Box2BoxTransform weights of each stage (gnhub's box_stds are their inverses, 4 per stage)."""
        stds = self.s["roi_heads.box_stds"]
        return [tuple(1.0 / s for s in stds[i:i + 4]) for i in range(0, len(stds), 4)]

    def mask_head(self, x: Tensor) -> Tensor:
        for n in range(1, self.convs("roi_heads.mask_head.mask_fcn") + 1):
            x = self.conv(x, f"roi_heads.mask_head.mask_fcn{n}", 1, 1, relu=True)
        x = F.relu(F.conv_transpose2d(x, self.sd["roi_heads.mask_head.deconv.weight"],
                                      self.sd["roi_heads.mask_head.deconv.bias"], stride=2))
        return self.conv(x, "roi_heads.mask_head.predictor")

    def inference(self, boxes: Tensor, scores: Tensor, image_size):
        """fast_rcnn_inference_single_image, from predict_boxes' boxes (R, 4K, or 4 class-agnostic)
        and predict_probs' scores."""
        # torchvision (slow to import) only when the reference runs
        from torchvision.ops import batched_nms

        valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
        boxes, scores = boxes[valid], scores[valid]
        scores = scores[:, :-1]
        k = boxes.shape[1] // 4
        boxes = self.clip(boxes.reshape(-1, 4), *image_size).view(-1, k, 4)
        filter_mask = scores > self.s["roi_heads.score_thresh"]
        filter_inds = filter_mask.nonzero()
        boxes = boxes[filter_inds[:, 0], 0] if k == 1 else boxes[filter_mask]
        scores = scores[filter_mask]
        keep = batched_nms(boxes.float(), scores, filter_inds[:, 1], self.s["roi_heads.nms_iou"])
        keep = keep[: int(self.s["roi_heads.detections_per_image"])]
        return boxes[keep], scores[keep], filter_inds[keep][:, 1]

    @staticmethod
    def paste(probs: Tensor, boxes: Tensor, h: int, w: int, threshold: float) -> Tensor:
        """mask_ops.paste_masks_in_image on a CPU: one mask at a time, its box's region only."""
        out = torch.zeros(len(probs), h, w, dtype=torch.bool)
        for i in range(len(probs)):
            box = boxes[i:i + 1]
            x0_int, y0_int = torch.clamp(box.min(dim=0).values.floor()[:2] - 1, min=0).to(dtype=torch.int32)
            x1_int = torch.clamp(box[:, 2].max().ceil() + 1, max=w).to(dtype=torch.int32)
            y1_int = torch.clamp(box[:, 3].max().ceil() + 1, max=h).to(dtype=torch.int32)
            x0, y0, x1, y1 = torch.split(box, 1, dim=1)
            img_y = (torch.arange(y0_int, y1_int, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
            img_x = (torch.arange(x0_int, x1_int, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
            gx = img_x[:, None, :].expand(1, img_y.size(1), img_x.size(1))
            gy = img_y[:, :, None].expand(1, img_y.size(1), img_x.size(1))
            pasted = F.grid_sample(probs[i:i + 1, None], torch.stack([gx, gy], dim=3), align_corners=False)
            out[i, y0_int:y1_int, x0_int:x1_int] = pasted[0, 0] >= threshold
        return out

    # -- PanopticFPN: SemSegFPNHead, sem_seg_postprocess, combine_semantic_and_instance_outputs --
    def sem_seg_head(self, p: list[Tensor]) -> Tensor:
        """scale_heads of p2-p5 (Conv2d with GN and ReLU, each followed by nn.Upsample(2, bilinear)
        unless the level is at the common stride 4), summed; predictor; upsampled x4 (bilinear)."""
        x = None
        for level, f in zip(range(2, 6), p):
            convs = sorted(int(k.split(".")[2]) for k in self.sd
                           if k.startswith(f"sem_seg_head.p{level}.") and k.endswith(".weight") and ".norm." not in k)
            for i in convs:
                f = self.conv(f, f"sem_seg_head.p{level}.{i}", 1, 1, relu=True)
                if level != 2:
                    f = F.interpolate(f, scale_factor=2, mode="bilinear", align_corners=False)
            x = f if x is None else x + f
        x = self.conv(x, "sem_seg_head.predictor")
        return F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)

    def panoptic(self, masks: Tensor, scores: Tensor, classes: Tensor, semantic: Tensor):
        """combine_semantic_and_instance_outputs -> (segment map, rows id, isthing, category_id,
        instance_id (-1: stuff), area (-1: thing)); thresholds: PANOPTIC_FPN.COMBINE (defaults.py)."""
        overlap = self.s.get("semantic.overlap_thresh", 0.5)
        stuff_area = self.s.get("semantic.stuff_area", 4096)
        score_thresh = self.s.get("semantic.instance_score_thresh", 0.5)
        panoptic_seg = torch.zeros_like(semantic, dtype=torch.int32)
        segments = []
        for inst_id in torch.argsort(-scores):
            if scores[inst_id].item() < score_thresh:
                break
            mask = masks[inst_id]
            mask_area = mask.sum().item()
            if mask_area == 0:
                continue
            intersect_area = ((mask > 0) & (panoptic_seg > 0)).sum().item()
            if intersect_area * 1.0 / mask_area > overlap:
                continue
            if intersect_area > 0:
                mask = mask & (panoptic_seg == 0)
            panoptic_seg[mask] = len(segments) + 1
            segments.append([len(segments) + 1, 1, classes[inst_id].item(), inst_id.item(), -1])
        for label in torch.unique(semantic).tolist():
            if label == 0:
                continue
            mask = (semantic == label) & (panoptic_seg == 0)
            mask_area = mask.sum().item()
            if mask_area < stuff_area:
                continue
            panoptic_seg[mask] = len(segments) + 1
            segments.append([len(segments) + 1, 0, label, -1, mask_area])
        return panoptic_seg, torch.tensor(segments, dtype=torch.int64).view(-1, 5)

    # -- the whole test path ---------------------------------------------------------------
    @torch.inference_mode()
    def __call__(self, rgb: np.ndarray) -> dict[str, Tensor]:
        x, image_size = self.preprocess(rgb)
        c = self.resnet(x)
        p = self.fpn(c)
        logits, deltas, proposals, objectness = self.rpn(p, image_size)
        if self.stages:
            cls, box_deltas, probs, decoded = self.cascade(p[:4], proposals, image_size)
        else:
            cls, box_deltas = self.box_head(self.pool(p[:4], proposals, 7))
            probs, decoded = F.softmax(cls, dim=-1), self.apply_deltas(box_deltas, proposals, self.weights()[0])
        boxes, scores, labels = self.inference(decoded, probs, image_size)
        out = {S.INPUT: x, S.PROPOSALS: proposals, S.PROPOSAL_SCORES: objectness, S.ROI_CLS_LOGITS: cls,
               S.ROI_BOX_DELTAS: box_deltas}
        if self.masks:
            mask_logits = self.mask_head(self.pool(p[:4], boxes, 14))[torch.arange(len(boxes)), labels]
        h, w = rgb.shape[:2]  # detector_postprocess
        scaled = boxes.clone()
        scaled[:, 0::2] *= w / image_size[1]
        scaled[:, 1::2] *= h / image_size[0]
        scaled = self.clip(scaled, h, w)
        keep = ((scaled[:, 2] - scaled[:, 0]) > 0.0) & ((scaled[:, 3] - scaled[:, 1]) > 0.0)
        out.update({S.BOXES: scaled[keep], S.SCORES: scores[keep], S.LABELS: labels[keep]})
        if self.masks:
            out[S.MASK_LOGITS] = mask_logits[keep]
            out[S.MASKS] = self.paste(mask_logits[keep].sigmoid(), scaled[keep], h, w,
                                      self.s["roi_heads.mask_threshold"])
        if self.semantic:
            sem = self.sem_seg_head(p[:4])
            labels_map = F.interpolate(sem[:, :, : image_size[0], : image_size[1]], size=(h, w), mode="bilinear",
                                       align_corners=False)[0].argmax(dim=0)
            out.update({S.SEM_SEG_LOGITS: sem, S.SEM_SEG: labels_map})
            out[S.PANOPTIC], out[S.SEGMENTS] = self.panoptic(out[S.MASKS], out[S.SCORES], out[S.LABELS], labels_map)
        out.update(S.pyramid(c, p, logits, deltas))
        return out
