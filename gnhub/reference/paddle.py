"""An independent forward of PaddleDetection's GN (Cascade) Mask / Faster R-CNN (configs/gn), written against
the parameter names of a `.pdparams` state dict (its Linear weights as the converter gives them,
[out, in]).

It follows PaddleDetection's test path step by step (data/transform Resize, NormalizeImage,
Permute, PadBatch; backbones/resnet.py with frozen BatchNorm, necks/fpn.py, proposal_generator/
anchor_generator.py and rpn_head.py with paddle's generate_proposals kernel, heads/roi_extractor.py
with distribute_fpn_proposals, heads/bbox_head.py XConvNormHead, heads/cascade_head.py CascadeHead
and CascadeXConvNormHead, layers.py RCNNBox and paddle's
multiclass_nms3 kernel, post_process.py get_pred, MaskPostProcess and paste_mask) with plain torch,
numpy, OpenCV and torchvision.ops (nms, roi_align); it shares no code with gnhub's model. Outputs
use gnhub's stage names (proposal scores are objectness logits), so `gnhub verify` can compare.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import stages as S

__all__ = ["CLIP", "PaddleReference"]

CLIP = math.log(1000.0 / 16)  # bbox_util.h kBBoxClipDefault, ppdet's delta2bbox clip_scale


class PaddleReference:
    def __init__(self, state_dict: dict[str, Tensor], settings: dict):
        """`settings` by config path: preprocess.*, rpn.*, roi_heads.* (converters.paddle and the zoo)."""
        self.sd = {k: v.float().contiguous() for k, v in state_dict.items() if isinstance(v, Tensor)}
        self.s = settings
        self.blocks = [len({k.split(".")[2] for k in self.sd if k.startswith(f"backbone.res{n}.")})
                       for n in range(2, 6)]
        self.masks = any(k.startswith("mask_head.") for k in self.sd)
        # CascadeHead: bbox_score_stage0, bbox_score_stage1, ... (a BBoxHead's has no stage number)
        self.stages = len([k for k in self.sd if k.startswith("bbox_head.bbox_score_stage") and k.endswith(".weight")])

    # -- layers ----------------------------------------------------------------------------
    def conv_norm(self, x: Tensor, name: str, stride=1, relu=False) -> Tensor:
        """A ConvNormLayer: conv (padding (k - 1) // 2, no bias), then its norm: frozen BatchNorm
        (use_global_stats: the saved mean and variance, eps 1e-5) where it has statistics, else
        GroupNorm (32 groups, eps 1e-5)."""
        w = self.sd[name + ".conv.weight"]
        x = F.conv2d(x, w, None, stride, (w.shape[-1] - 1) // 2)
        n = name + ".norm."
        if n + "_mean" in self.sd:
            x = F.batch_norm(x, self.sd[n + "_mean"], self.sd[n + "_variance"], self.sd[n + "weight"],
                             self.sd[n + "bias"], training=False, eps=1e-5)
        else:
            x = F.group_norm(x, 32, self.sd[n + "weight"], self.sd[n + "bias"], 1e-5)
        return F.relu(x) if relu else x

    # -- TestReader: Resize (keep_ratio, cubic), NormalizeImage, Permute, PadBatch ------------
    def preprocess(self, rgb: np.ndarray):
        import cv2  # slow to import: only when the reference runs

        im = rgb if self.s["preprocess.channel_order"] == "RGB" else rgb[:, :, ::-1]
        h, w = im.shape[:2]
        short, long = min(self.s["preprocess.max_size"]), max(self.s["preprocess.max_size"])
        scale = min(short / min(h, w), long / max(h, w))
        rh, rw = int(scale * float(h) + 0.5), int(scale * float(w) + 0.5)
        im = cv2.resize(np.ascontiguousarray(im), None, None, fx=rw / w, fy=rh / h, interpolation=cv2.INTER_CUBIC)
        im = im.astype(np.float32)
        im *= 1.0 / 255.0
        im -= np.array(self.s["preprocess.mean"])[None, None] / 255.0
        im /= np.array(self.s["preprocess.std"])[None, None] / 255.0
        d = self.s["preprocess.size_divisor"]
        out = np.zeros((3, -(-rh // d) * d, -(-rw // d) * d), np.float32)
        out[:, :rh, :rw] = im.transpose(2, 0, 1)
        factor = np.array([rh / h, rw / w], np.float32)  # scale_factor: (y, x)
        return torch.from_numpy(out)[None], (rh, rw), factor

    # -- backbone: ResNet (variant b, frozen BN) and FPN (GN) ------------------------------
    def resnet(self, x: Tensor) -> list[Tensor]:
        x = self.conv_norm(x, "backbone.conv1.conv1", 2, relu=True)
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        outs = []
        for stage, n in zip(range(2, 6), self.blocks):
            for i in range(n):
                name = f"res4{'a' if i == 0 else f'b{i}'}" if n > 10 and stage == 4 else f"res{stage}{chr(97 + i)}"
                p = f"backbone.res{stage}.{name}"
                stride = 2 if i == 0 and stage != 2 else 1
                out = self.conv_norm(x, p + ".branch2a", relu=True)
                out = self.conv_norm(out, p + ".branch2b", stride, relu=True)
                out = self.conv_norm(out, p + ".branch2c")
                short = self.conv_norm(x, p + ".short", stride) if i == 0 else x
                x = F.relu(out + short)
            outs.append(x)
        return outs

    def fpn(self, c: list[Tensor]) -> list[Tensor]:
        laterals = [self.conv_norm(f, f"neck.fpn_inner_res{lvl}_sum" + ("" if lvl == 5 else "_lateral"))
                    for lvl, f in zip(range(2, 6), c)]
        for lvl in range(3, 0, -1):
            laterals[lvl - 1] = laterals[lvl - 1] + F.interpolate(laterals[lvl], scale_factor=2.0, mode="nearest")
        out = [self.conv_norm(x, f"neck.fpn_res{lvl}_sum") for lvl, x in zip(range(2, 6), laterals)]
        return out + [F.max_pool2d(out[-1], 1, stride=2)]

    # -- RPN: AnchorGenerator, generate_proposals per level, then the best over all levels --
    @staticmethod
    def anchors(size: float, stride: int, hh: int, ww: int) -> Tensor:
        cell = []
        for ratio in (0.5, 1.0, 2.0):
            w = math.sqrt(size**2.0 / ratio)
            h = ratio * w
            cell.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
        sy, sx = torch.meshgrid(torch.arange(0, hh * stride, stride, dtype=torch.float32),
                                torch.arange(0, ww * stride, stride, dtype=torch.float32), indexing="ij")
        shifts = torch.stack((sx.reshape(-1), sy.reshape(-1), sx.reshape(-1), sy.reshape(-1)), dim=1)
        return (shifts.view(-1, 1, 4) + torch.tensor(cell).view(1, -1, 4)).reshape(-1, 4)

    @staticmethod
    def decode(deltas: Tensor, boxes: Tensor, weights) -> Tensor:
        """ppdet's delta2bbox / paddle's BoxCoder (pixel_offset False): (N, 4k) deltas -> (N, k, 4)."""
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        ctr_x, ctr_y = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
        wx, wy, ww, wh = weights
        dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
        dw, dh = torch.clamp(deltas[:, 2::4] / ww, max=CLIP), torch.clamp(deltas[:, 3::4] / wh, max=CLIP)
        px, py = dx * widths[:, None] + ctr_x[:, None], dy * heights[:, None] + ctr_y[:, None]
        pw, ph = torch.exp(dw) * widths[:, None], torch.exp(dh) * heights[:, None]
        return torch.stack([px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph], dim=-1)

    @staticmethod
    def clip(boxes: Tensor, h: float, w: float) -> Tensor:
        return torch.stack([boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h), boxes[..., 2].clamp(0, w),
                            boxes[..., 3].clamp(0, h)], dim=-1)

    def rpn(self, p: list[Tensor], image_size):
        from torchvision.ops import nms  # slow to import: only when the reference runs

        logits, deltas, rois, probs = [], [], [], []
        for lvl, f in enumerate(p):
            stride = 4 * 2**lvl
            t = F.relu(F.conv2d(f, self.sd["rpn_head.rpn_feat.rpn_conv.weight"],
                                self.sd["rpn_head.rpn_feat.rpn_conv.bias"], padding=1))
            o = F.conv2d(t, self.sd["rpn_head.rpn_rois_score.weight"], self.sd["rpn_head.rpn_rois_score.bias"])
            d = F.conv2d(t, self.sd["rpn_head.rpn_rois_delta.weight"], self.sd["rpn_head.rpn_rois_delta.bias"])
            logits.append(o)
            deltas.append(d)
            score = o[0].permute(1, 2, 0).reshape(-1)
            delta = d[0].permute(1, 2, 0).reshape(-1, 4)
            anchors = self.anchors(8.0 * stride, stride, *o.shape[-2:])
            top = int(self.s["rpn.pre_nms_top_n"])
            idx = score.argsort(descending=True)[:top] if 0 < top < len(score) else torch.arange(len(score))
            boxes = self.clip(self.decode(delta[idx], anchors[idx], (1.0, 1.0, 1.0, 1.0))[:, 0], *image_size)
            min_size = max(float(self.s["rpn.min_size"]), 1.0)
            keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
            boxes, s = boxes[keep], score[idx][keep]
            keep = nms(boxes, s, float(self.s["rpn.nms_iou"]))[: int(self.s["rpn.post_nms_top_n"])]
            rois.append(boxes[keep])
            probs.append(s[keep])
        rois, probs = torch.cat(rois), torch.cat(probs)
        top = probs.topk(min(len(probs), int(self.s["rpn.post_nms_top_n"]))).indices
        return logits, deltas, rois[top], probs[top]

    # -- RoI heads ---------------------------------------------------------------------------
    def pool(self, p: list[Tensor], boxes: Tensor, size: int) -> Tensor:
        """RoIAlign over distribute_fpn_proposals' levels (2-5, canonical level 4 at size 224)."""
        from torchvision.ops import roi_align  # slow to import: only when the reference runs

        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        area = torch.where((w < 0) | (h < 0), torch.zeros_like(w), w * h)
        levels = torch.floor(torch.log2(torch.sqrt(area) / 224 + 1e-6) + 4).clamp(2, 5).long() - 2
        rois = torch.cat([torch.zeros(len(boxes), 1), boxes], dim=1)
        out = torch.zeros(len(boxes), p[0].shape[1], size, size)
        for lvl in range(4):
            inds = torch.nonzero(levels == lvl, as_tuple=True)[0]
            out[inds] = roi_align(p[lvl], rois[inds], (size, size), 1.0 / 2 ** (lvl + 2),
                                  int(self.s["roi_heads.sampling_ratio"]), bool(self.s["roi_heads.aligned"]))
        return out

    def box_head(self, x: Tensor, stage: int | None = None) -> tuple[Tensor, Tensor]:
        """XConvNormHead and BBoxHead's bbox_score / bbox_delta; of CascadeHead's stage `stage`:
        CascadeXConvNormHead's head_list[stage] (convs named stage{stage}_bbox_head_conv*) and
        bbox_score_stage{stage} / bbox_delta_stage{stage}."""
        head, convs, tail = ("bbox_head.head.", "bbox_head_conv", "") if stage is None else \
            (f"bbox_head.head.{stage}.", f"stage{stage}_bbox_head_conv", f"_stage{stage}")
        for n in range(4):
            x = self.conv_norm(x, f"{head}{convs}{n}", relu=True)
        x = F.relu(F.linear(x.flatten(1), self.sd[head + "fc6.weight"], self.sd[head + "fc6.bias"]))
        return (F.linear(x, self.sd[f"bbox_head.bbox_score{tail}.weight"], self.sd[f"bbox_head.bbox_score{tail}.bias"]),
                F.linear(x, self.sd[f"bbox_head.bbox_delta{tail}.weight"], self.sd[f"bbox_head.bbox_delta{tail}.bias"]))

    def weights(self, stage: int = 0) -> tuple[float, ...]:
        """The decoding weights of stage `stage` (CascadeHead's bbox_weight[stage]; the last one is
        RCNNBox's prior_box_var): gnhub's box_stds inverted, 4 per stage."""
        return tuple(1.0 / s for s in self.s["roi_heads.box_stds"][4 * stage: 4 * stage + 4])

    def cascade(self, p: list[Tensor], proposals: Tensor, image_size):
        """CascadeHead.forward at test time: stage i > 0 pools _get_rois_from_boxes' boxes
        (delta2bbox of the previous stage's class-agnostic deltas with its bbox_weight, clip_bbox to
        im_shape; nothing dropped at test time); get_prediction: add_n of the stages' softmax
        divided by the number of stages, the last stage's deltas and RoIs -> (the first stage's
        logits and deltas, the probabilities, the last stage's deltas and RoIs)."""
        rois, probs = proposals, []
        for i in range(self.stages):
            cls, deltas = self.box_head(self.pool(p, rois, 7), i)
            if i == 0:
                first = cls, deltas
            probs.append(F.softmax(cls, dim=-1))
            if i + 1 < self.stages:  # the next stage's RoIs
                rois = self.clip(self.decode(deltas, rois, self.weights(i))[:, 0], *image_size)
        return *first, sum(probs) / self.stages, deltas, rois

    def detect(self, probs: Tensor, deltas: Tensor, rois: Tensor, image_size, weights):
        """RCNNBox (decode with `weights`, (N, 1, 4) expanded to every class where class-agnostic,
        clip to the resized image, the probabilities without the background column) and
        multiclass_nms3: per class scores > threshold, NMS, then the keep_top_k best over all
        classes."""
        from torchvision.ops import nms  # slow to import: only when the reference runs

        boxes = self.clip(self.decode(deltas, rois, weights), *image_size)
        scores = probs[:, :-1]
        boxes = boxes.expand(len(boxes), scores.shape[1], 4)
        out_boxes, out_scores, out_labels = [], [], []
        for c in range(scores.shape[1]):
            idx = torch.nonzero(scores[:, c] > self.s["roi_heads.score_thresh"], as_tuple=True)[0]
            keep = idx[nms(boxes[idx, c], scores[idx, c], float(self.s["roi_heads.nms_iou"]))]
            out_boxes.append(boxes[keep, c])
            out_scores.append(scores[keep, c])
            out_labels.append(torch.full((len(keep),), c, dtype=torch.long))
        boxes, scores, labels = torch.cat(out_boxes), torch.cat(out_scores), torch.cat(out_labels)
        best = scores.argsort(descending=True, stable=True)[: int(self.s["roi_heads.detections_per_image"])]
        return boxes[best], scores[best], labels[best]

    def mask_head(self, x: Tensor) -> Tensor:
        for n in range(1, 5):
            x = self.conv_norm(x, f"mask_head.head.upsample.mask_inter_feat_{n}", relu=True)
        x = F.relu(F.conv_transpose2d(x, self.sd["mask_head.head.upsample.conv5_mask.weight"],
                                      self.sd["mask_head.head.upsample.conv5_mask.bias"], stride=2))
        return F.conv2d(x, self.sd["mask_head.mask_fcn_logits.weight"], self.sd["mask_head.mask_fcn_logits.bias"])

    @staticmethod
    def paste(probs: Tensor, boxes: Tensor, h: int, w: int, threshold: float) -> Tensor:
        """ppdet's paste_mask: grid_sample (align_corners False) at every pixel centre of the image."""
        x0, y0, x1, y1 = boxes.split(1, dim=1)
        img_y = (torch.arange(h, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
        img_x = (torch.arange(w, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
        gx = img_x[:, None, :].expand(len(boxes), h, w)
        gy = img_y[:, :, None].expand(len(boxes), h, w)
        grid = torch.stack([gx, gy], dim=3)
        return F.grid_sample(probs[:, None], grid, align_corners=False)[:, 0] >= threshold

    # -- the whole test path ---------------------------------------------------------------
    @torch.inference_mode()
    def __call__(self, rgb: np.ndarray) -> dict[str, Tensor]:
        x, image_size, factor = self.preprocess(rgb)
        c = self.resnet(x)
        p = self.fpn(c)
        logits, deltas, proposals, objectness = self.rpn(p, image_size)
        if self.stages:
            cls, box_deltas, probs, last, rois = self.cascade(p[:4], proposals, image_size)
            boxes, scores, labels = self.detect(probs, last, rois, image_size, self.weights(self.stages - 1))
        else:
            cls, box_deltas = self.box_head(self.pool(p[:4], proposals, 7))
            boxes, scores, labels = self.detect(F.softmax(cls, dim=-1), box_deltas, proposals, image_size,
                                                self.weights())
        out = {S.INPUT: x, S.PROPOSALS: proposals, S.PROPOSAL_SCORES: objectness, S.ROI_CLS_LOGITS: cls,
               S.ROI_BOX_DELTAS: box_deltas}
        if self.masks:
            mask_logits = self.mask_head(self.pool(p[:4], boxes, 14))[torch.arange(len(boxes)), labels]
        h, w = rgb.shape[:2]  # get_pred: divided by the scale factor, clipped to the original size
        sf = torch.from_numpy(factor)
        scaled = self.clip(boxes / torch.stack([sf[1], sf[0], sf[1], sf[0]]), h, w)
        keep = ((scaled[:, 2] - scaled[:, 0]) > 0) & ((scaled[:, 3] - scaled[:, 1]) > 0)  # the rest labelled -1
        out.update({S.BOXES: scaled[keep], S.SCORES: scores[keep], S.LABELS: labels[keep]})
        if self.masks:
            out[S.MASK_LOGITS] = mask_logits[keep]
            out[S.MASKS] = self.paste(mask_logits[keep].sigmoid(), scaled[keep], h, w,
                                      self.s["roi_heads.mask_threshold"])
        out.update(S.pyramid(c, p, logits, deltas))
        return out
