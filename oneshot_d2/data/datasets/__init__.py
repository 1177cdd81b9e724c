"""Dataset converters, loaders and registration (public API for other labs)."""
from .builtin import prepare_cncb_layout, register_all_builtin, register_cncb_layout
from .covid_ct import (
    COVIDX_CLASSES,
    CT_CLS_EVALUATOR,
    load_covidx_split,
    load_csv_manifest,
    parse_covidx_name,
    parse_label,
    register_covidx_cls,
    register_csv_cls,
    register_ct_cls,
    register_ct_seg,
)
from .label_masks import (
    CNCB_CATEGORY_VALUES,
    CNCB_MASK_VALUES,
    cncb_masks_to_coco,
    label_masks_to_coco,
    mask_to_instances,
    read_split_file,
)

__all__ = [
    "COVIDX_CLASSES", "CT_CLS_EVALUATOR", "load_covidx_split", "load_csv_manifest",
    "parse_covidx_name", "parse_label", "register_covidx_cls", "register_csv_cls",
    "register_ct_cls", "register_ct_seg", "CNCB_CATEGORY_VALUES", "CNCB_MASK_VALUES",
    "cncb_masks_to_coco", "label_masks_to_coco", "mask_to_instances", "read_split_file",
    "prepare_cncb_layout", "register_all_builtin", "register_cncb_layout",
]

register_all_builtin()
