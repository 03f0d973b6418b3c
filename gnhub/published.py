"""Every figure the upstream zoos publish for their GN models, copied row by row from their own
tables (the column order of each is its source's), and the citations. gnhub/zoo.py builds the
registry from these rows; tests/test_zoo.py holds each row to its upstream copy.

Why rows in code, not mmdetection's metafile.yml: the registry is read by every torch-free
command (list, info, fetch), so it must import without parsing YAML; a tuple per published row
reads side by side with the upstream table it copies, and a test pins each one.
"""
from __future__ import annotations

from .config import IMAGENET_BGR_STD

__all__ = ["CASCADE", "CITATIONS", "DCN", "DETECTRON", "DETECTRON2", "DETECTRON2_CITATION", "DETECTRON2_RESULTS",
    "DETECTRON2_PANOPTIC", "DETECTRON2_URL", "DETECTRON2_X152", "DETECTRON_CITATION", "DETECTRON_IMAGENET",
    "DETECTRON_RESULTS",
    "DETECTRON_RUN", "DETECTRON_URL", "GN", "MMDET", "MMDET_GN", "MMDET_GN_RESULTS", "MMDET_GN_URL", "MMDET_GN_WS",
    "MMDET_GN_WS_RESULTS", "MMDET_GN_WS_URL", "MMDET_SCRATCH", "MMDET_SCRATCH_RESULTS", "MMDET_SCRATCH_URL",
    "RETHINKING", "WS"]

# -- mmdetection: configs/gn/README.md (v2.0 model zoo) ------------------------------------------
# name, depth, pretrained backbone ("(d)" Detectron's, "(c)" contributed), schedule, epochs,
# file stamp (date-sha256 prefix), box AP, mask AP, train memory (GB), inference fps ("-": None)
MMDET_GN_URL = "https://download.openmmlab.com/mmdetection/v2.0/gn/{name}/{file}"
MMDET_GN_RESULTS = "https://github.com/open-mmlab/mmdetection/blob/main/configs/gn/README.md"
MMDET_GN = [
    ("mask_rcnn_r50_fpn_gn-all_2x_coco", 50, "(d)", "2x", 24, "20200206-8eee02a6", 40.2, 36.4, 7.1, 11.0),
    ("mask_rcnn_r50_fpn_gn-all_3x_coco", 50, "(d)", "3x", 36, "20200214-8b23b1e5", 40.5, 36.7, 7.1, None),
    ("mask_rcnn_r101_fpn_gn-all_2x_coco", 101, "(d)", "2x", 24, "20200205-d96b1b50", 41.9, 37.6, 9.9, 9.0),
    ("mask_rcnn_r101_fpn_gn-all_3x_coco", 101, "(d)", "3x", 36, "20200513_181609-0df864f4", 42.1, 38.0, 9.9, None),
    ("mask_rcnn_r50_fpn_gn-all_contrib_2x_coco", 50, "(c)", "2x", 24, "20200207-20d3e849", 40.0, 36.1, 7.1, 10.9),
    ("mask_rcnn_r50_fpn_gn-all_contrib_3x_coco", 50, "(c)", "3x", 36, "20200225-542aefbc", 40.1, 36.2, 7.1, None),
]

# -- mmdetection: configs/gn+ws/metafile.yml ------------------------------------------------------
# Name, backbone, Epochs, Weights file stamp, box AP, mask AP ("-": None), Training Memory (GB),
# inference time (ms/im) ("-": None). Schedules: "1x" (12 epochs), "2x" (24), "20_23_24e" (24).
MMDET_GN_WS_URL = "https://download.openmmlab.com/mmdetection/v2.0/gn%2Bws/{name}/{file}"
MMDET_GN_WS_RESULTS = "https://github.com/open-mmlab/mmdetection/blob/main/configs/gn%2Bws/metafile.yml"
MMDET_GN_WS = [
    ("faster_rcnn_r50_fpn_gn_ws-all_1x_coco", "R-50", 12, "20200130-613d9fe2", 39.7, None, 5.9, 85.47),
    ("faster_rcnn_r101_fpn_gn_ws-all_1x_coco", "R-101", 12, "20200205-a93b0d75", 41.7, None, 8.9, 111.11),
    ("faster_rcnn_x50_32x4d_fpn_gn_ws-all_1x_coco", "X-50-32x4d", 12, "20200203-839c5d9d", 40.7, None, 7.0, 97.09),
    ("faster_rcnn_x101_32x4d_fpn_gn_ws-all_1x_coco", "X-101-32x4d", 12, "20200212-27da1bc2", 42.1, None, 10.8, 131.58),
    ("mask_rcnn_r50_fpn_gn_ws-all_2x_coco", "R-50", 24, "20200226-16acb762", 40.6, 36.6, 7.3, 95.24),
    ("mask_rcnn_r101_fpn_gn_ws-all_2x_coco", "R-101", 24, "20200212-ea357cd9", 42.0, 37.7, 10.3, 116.28),
    ("mask_rcnn_x50_32x4d_fpn_gn_ws-all_2x_coco", "X-50-32x4d", 24, "20200216-649fdb6f", 41.1, 37.0, 8.4, 107.53),
    ("mask_rcnn_x101_32x4d_fpn_gn_ws-all_2x_coco", "X-101-32x4d", 24, "20200319-33fb95b5", 42.1, 37.9, 12.2, 140.85),
    ("mask_rcnn_r50_fpn_gn_ws-all_20_23_24e_coco", "R-50", 24, "20200213-487d1283", 41.1, 37.1, 7.3, None),
    ("mask_rcnn_r101_fpn_gn_ws-all_20_23_24e_coco", "R-101", 24, "20200213-57b5a50f", 43.1, 38.6, 10.3, None),
    ("mask_rcnn_x50_32x4d_fpn_gn_ws-all_20_23_24e_coco", "X-50-32x4d", 24, "20200226-969bcb2c", 42.1, 38.0, 8.4,
     None),
    ("mask_rcnn_x101_32x4d_fpn_gn_ws-all_20_23_24e_coco", "X-101-32x4d", 24, "20200316-e6cd35ef", 42.7, 38.5, 12.2,
     None),
]

# -- mmdetection: configs/scratch/metafile.yml ----------------------------------------------------
# Name, Epochs, Weights file, box AP, mask AP ("-": None); no memory or speed is published.
MMDET_SCRATCH_URL = "https://download.openmmlab.com/mmdetection/v2.0/scratch/{name}/{file}"
MMDET_SCRATCH_RESULTS = "https://github.com/open-mmlab/mmdetection/blob/main/configs/scratch/metafile.yml"
MMDET_SCRATCH = [
    ("faster_rcnn_r50_fpn_gn-all_scratch_6x_coco", 72,
     "scratch_faster_rcnn_r50_fpn_gn_6x_bbox_mAP-0.407_20200201_193013-90813d01.pth", 40.7, None),
    ("mask_rcnn_r50_fpn_gn-all_scratch_6x_coco", 72,
     "scratch_mask_rcnn_r50_fpn_gn_6x_bbox_mAP-0.412__segm_mAP-0.374_20200201_193051-1e190a40.pth", 41.2, 37.4),
]

# -- Detectron: projects/GN/README.md (detectors on COCO 2014 train + valminusminival, scored on
# minival = val2017; 2x = 180k, 3x = 270k iterations of 16 images; s/image on one P100) -----------
# name, depth, pretrained backbone, schedule, box AP, mask AP, train memory (GB), inference
# s/image (+ mask s/image), model id, run folder (None: no published download)
DETECTRON_URL = "https://dl.fbaipublicfiles.com/detectron/"
DETECTRON_RESULTS = "https://github.com/facebookresearch/Detectron/blob/main/projects/GN/README.md"
DETECTRON_RUN = "GN/{id}/04_2018_gn_baselines/{run}/output/train/coco_2014_train%3Acoco_2014_valminusminival/" \
    "generalized_rcnn/model_final.pkl"
DETECTRON = [
    ("e2e_mask_rcnn_R-50-FPN_2x_gn", 50, "imagenet", "2x", 40.3, 35.7, 10.5, 0.146 + 0.017,
     "48616381", "e2e_mask_rcnn_R-50-FPN_2x_gn_0416.13_23_38.bTlTI97Q"),
    ("e2e_mask_rcnn_R-101-FPN_2x_gn", 101, "imagenet", "2x", 41.8, 36.8, 12.4, 0.180 + 0.015,
     "48616724", "e2e_mask_rcnn_R-101-FPN_2x_gn_0416.13_26_34.GLnri4GR"),
    ("e2e_mask_rcnn_R-50-FPN_3x_gn", 50, "imagenet", "3x", 40.8, 36.1, 10.5, 0.145 + 0.015,
     "48734751", "e2e_mask_rcnn_R-50-FPN_3x_gn_0417.09_54_59.nwCTtPVk"),
    ("e2e_mask_rcnn_R-101-FPN_3x_gn", 101, "imagenet", "3x", 42.3, 37.2, 12.4, 0.180 + 0.014,
     "48734779", "e2e_mask_rcnn_R-101-FPN_3x_gn_0417.09_55_23.HMtcR8wg"),
    ("scratch_e2e_mask_rcnn_R-50-FPN_3x_gn", 50, "scratch", "3x", 39.5, 35.2, 10.8, 0.140 + 0.019, "56421872", None),
    ("scratch_e2e_mask_rcnn_R-101-FPN_3x_gn", 101, "scratch", "3x", 41.0, 36.4, 12.7, 0.177 + 0.019, "56421911", None),
]
# ImageNet backbones: name, depth, model id, top-1 error (centre crop)
DETECTRON_IMAGENET = [("R-50-GN", 50, "47261647", 24.0), ("R-101-GN", 101, "47592356", 22.6)]

# -- detectron2: MODEL_ZOO.md, "Misc" (configs/Misc/*_gn.yaml; 8 V100s, Big Basin servers) ------
# name, lr sched, train time (s/iter) ("N/A": None), inference time (s/im), train mem (GB),
# box AP, mask AP, model id, file, what its config changes from mask_rcnn_R_50_FPN_3x_gn (by
# gnhub config path: PIXEL_STD; FREEZE_AT 0, no frozen stage)
DETECTRON2_URL = "https://dl.fbaipublicfiles.com/detectron2/Misc/{name}/{id}/{file}"
DETECTRON2_RESULTS = "https://github.com/facebookresearch/detectron2/blob/main/MODEL_ZOO.md"
DETECTRON2 = [
    ("mask_rcnn_R_50_FPN_3x_gn", "3x", 0.309, 0.060, 5.6, 42.6, 38.6, "138602888", "model_final_dc5d9e.pkl", {}),
    ("scratch_mask_rcnn_R_50_FPN_3x_gn", "3x", 0.338, 0.061, 7.2, 39.9, 36.6, "138602908", "model_final_01ca85.pkl",
     {"train.frozen_stages": 0}),
    ("scratch_mask_rcnn_R_50_FPN_9x_gn", "9x", None, 0.061, 7.2, 43.7, 39.6, "183808979", "model_final_da7b4c.pkl",
     {"preprocess.std": IMAGENET_BGR_STD, "train.frozen_stages": 0}),
]
# The same table's "Mask R-CNN X152" row (its own columns: inference time (s/im), train mem (GB),
# box AP, mask AP, PQ (none), model id; no schedule: SOLVER.MAX_ITER 50000 of 128 images, the file
# is iteration 40k); "+ test-time aug." 51.9 / 45.9 below it is not a file. Its config: a FAIR
# ImageNet-5k ResNeXt-152 32x8d with FrozenBN and deformable res3-res5, FPN without norm,
# CascadeROIHeads (4conv1fc GN box heads, class-agnostic), an 8-conv GN mask head.
DETECTRON2_X152 = ("cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv", 0.234, 15.1, 50.2, 44.0, "18131413",
                   "model_0039999_e76410.pkl")
# The row above it, "Panoptic FPN R101" (the same columns; PQ 46.1 on COCO panoptic val2017): a GN ResNet-101
# with deformable res3-res5, GN FPN, CascadeROIHeads (2fc box heads without norm, class-agnostic), a 4-conv GN
# mask head and the semantic FPN head (configs/Misc/panoptic_fpn_R_101_dconv_cascade_gn_3x.yaml: 3x is
# SOLVER.MAX_ITER 135000 of 32 images).
DETECTRON2_PANOPTIC = ("panoptic_fpn_R_101_dconv_cascade_gn_3x", 0.098, 11.4, 47.4, 41.3, 46.1, "139797668",
                       "model_final_be35db.pkl")

# -- PaddleDetection: configs/gn/README.md (COCO 2017; 1 image per GPU, 2x = 24 epochs; ResNet50-FPN
# with frozen BatchNorm, GN in the FPN and heads; ImageNet backbone ResNet50_cos_pretrained) ------
# name, detector, box AP, mask AP (None: "-")
PADDLE_URL = "https://paddledet.bj.bcebos.com/models/{name}.pdparams"
PADDLE_RESULTS = "https://github.com/PaddlePaddle/PaddleDetection/blob/develop/configs/gn/README.md"
PADDLE = [
    ("faster_rcnn_r50_fpn_gn_2x_coco", "faster-rcnn", 41.9, None),
    ("mask_rcnn_r50_fpn_gn_2x_coco", "mask-rcnn", 42.3, 38.4),
    ("cascade_rcnn_r50_fpn_gn_2x_coco", "faster-rcnn", 44.6, None),
    ("cascade_mask_rcnn_r50_fpn_gn_2x_coco", "mask-rcnn", 45.0, 39.3),
]

# -- citations -----------------------------------------------------------------------------------
GN = """@inproceedings{wu2018group,
  title={Group Normalization},
  author={Wu, Yuxin and He, Kaiming},
  booktitle={Proceedings of the European Conference on Computer Vision (ECCV)},
  year={2018}
}"""
WS = """@article{qiao2019weight,
  title={Weight Standardization},
  author={Qiao, Siyuan and Wang, Huiyu and Liu, Chenxi and Shen, Wei and Yuille, Alan},
  journal={arXiv preprint arXiv:1903.10520},
  year={2019}
}"""
RETHINKING = """@inproceedings{he2019rethinking,
  title={Rethinking ImageNet Pre-training},
  author={He, Kaiming and Girshick, Ross and Doll{\\'a}r, Piotr},
  booktitle={Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year={2019}
}"""
MMDET = """@article{mmdetection,
  title={{MMDetection}: Open MMLab Detection Toolbox and Benchmark},
  author={Chen, Kai and Wang, Jiaqi and Pang, Jiangmiao and others},
  journal={arXiv preprint arXiv:1906.07155},
  year={2019}
}"""
DETECTRON_CITATION = """@misc{Detectron2018,
  author = {Ross Girshick and Ilija Radosavovic and Georgia Gkioxari and Piotr Doll\\'{a}r and Kaiming He},
  title = {Detectron},
  howpublished = {\\url{https://github.com/facebookresearch/detectron}},
  year = {2018}
}"""
DETECTRON2_CITATION = """@misc{wu2019detectron2,
  author = {Yuxin Wu and Alexander Kirillov and Francisco Massa and Wan-Yen Lo and Ross Girshick},
  title = {Detectron2},
  howpublished = {\\url{https://github.com/facebookresearch/detectron2}},
  year = {2019}
}"""
PADDLE_CITATION = """@misc{ppdet2019,
  title={PaddleDetection, Object detection and instance segmentation toolkit based on PaddlePaddle.},
  author={PaddlePaddle Authors},
  howpublished = {\\url{https://github.com/PaddlePaddle/PaddleDetection}},
  year={2019}
}"""
CASCADE = """@inproceedings{cai2018cascade,
  title={Cascade R-CNN: Delving into High Quality Object Detection},
  author={Cai, Zhaowei and Vasconcelos, Nuno},
  booktitle={Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2018}
}"""
DCN = """@inproceedings{dai2017deformable,
  title={Deformable Convolutional Networks},
  author={Dai, Jifeng and Qi, Haozhi and Xiong, Yuwen and Li, Yi and Zhang, Guodong and Hu, Han and Wei, Yichen},
  booktitle={Proceedings of the IEEE International Conference on Computer Vision (ICCV)},
  year={2017}
}"""
CITATIONS = {"gn": GN, "ws": WS, "rethinking": RETHINKING, "mmdet": MMDET, "detectron": DETECTRON_CITATION,
             "detectron2": DETECTRON2_CITATION, "paddle": PADDLE_CITATION, "cascade": CASCADE, "dcn": DCN}
