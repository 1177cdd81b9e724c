"""A phantom CT *study*: one synthetic patient as a volume of consecutive axial slices, written
as a DICOM series and as a NIfTI volume -- the input of ``make predict-demo`` and of the predict
tests (readers, burden arithmetic against the phantom's own masks).

Slices are in display orientation (rows anterior -> posterior, columns patient right -> left),
ordered inferior -> superior, like :mod:`oneshot_d2.inference.study`.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from .phantom import COVID, render_slice, sample_anatomy

__all__ = ["PhantomStudy", "render_phantom_study", "write_dicom_series", "write_nifti_volume"]


@dataclass
class PhantomStudy:
    """A rendered phantom patient.

    Attributes:
        hu: (N, H, W) float32 Hounsfield units, display orientation, inferior slice first.
        mask: (N, H, W) uint8 {0 background, 1 lung, 2 GGO, 3 consolidation}.
        spacing: (row, column, slice) spacing in mm.
        label: slice class of the patient (0 normal, 1 CP, 2 COVID-19).
    """

    hu: np.ndarray
    mask: np.ndarray
    spacing: Tuple[float, float, float]
    label: int


def render_phantom_study(label: int = COVID, num_slices: int = 24, size: int = 256,
                         seed: int = 0, slice_spacing_mm: float = 5.0,
                         pixel_spacing_mm: Optional[float] = None) -> PhantomStudy:
    """Render one phantom patient from apex-ish (z 0.1) to base-ish (z 0.9).

    Args:
        label: slice class of every slice (0 normal, 1 CP, 2 COVID-19).
        num_slices: N.
        size: slice height = width in pixels.
        seed: the study is a deterministic function of it.
        slice_spacing_mm: distance between slices.
        pixel_spacing_mm: default: a 350 mm field of view (as the phantom dataset).
    """
    rng = np.random.default_rng(seed)
    anatomy = sample_anatomy(rng)
    # display order is inferior -> superior: z (apex 0 .. base 1) decreases along it
    zs = np.linspace(0.9, 0.1, num_slices) if num_slices > 1 else np.array([0.5])
    slices = [render_slice(rng, size, label, anatomy, float(z)) for z in zs]
    sp = float(pixel_spacing_mm or 350.0 / size)
    return PhantomStudy(hu=np.stack([s.hu for s in slices]).astype(np.float32),
                        mask=np.stack([s.mask for s in slices]).astype(np.uint8),
                        spacing=(sp, sp, float(slice_spacing_mm)), label=label)


def write_nifti_volume(path: str, volume: np.ndarray, spacing: Sequence[float],
                       dtype=np.int16) -> None:
    """Write display-oriented slices (N, H, W) as a RAS+ NIfTI volume (X, Y, N) with the
    spacing in its affine (origin 0)."""
    import nibabel as nib

    from .orientation import display_to_canonical

    data = display_to_canonical(np.rint(volume) if np.dtype(dtype).kind == "i" else volume)
    affine = np.diag([float(spacing[1]), float(spacing[0]), float(spacing[2]), 1.0])
    img = nib.Nifti1Image(data.astype(dtype), affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)


def write_dicom_series(folder: str, hu: np.ndarray, spacing: Sequence[float],
                       origin: Sequence[float] = (-175.0, -175.0, -300.0),
                       slope: float = 1.0, intercept: float = -1024.0,
                       patient_id: str = "PHANTOM", series_number: int = 1,
                       file_order: Optional[Sequence[int]] = None,
                       series_uid: Optional[str] = None) -> list:
    """Write display-oriented HU slices as an axial CT DICOM series (one file per slice).

    Args:
        folder: output folder (created).
        hu: (N, H, W) Hounsfield units, inferior slice first.
        spacing: (row, column, slice) spacing in mm.
        origin: LPS position (mm) of the first pixel of the first slice.
        slope / intercept: RescaleSlope / RescaleIntercept; stored values are
            ``round((hu - intercept) / slope)`` as int16.
        file_order: the file number of each slice (default in order); e.g. a permutation to
            check that readers sort by position, not by name.
        series_uid: SeriesInstanceUID (default: a new one).
    Returns:
        the written file paths, in slice order.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    os.makedirs(folder, exist_ok=True)
    study_uid, series_uid = generate_uid(), series_uid or generate_uid()
    frame_uid = generate_uid()
    now = datetime.datetime(2026, 1, 1)
    order = list(range(len(hu))) if file_order is None else list(file_order)
    paths = []
    for k, image in enumerate(hu):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = os.path.join(folder, f"IM{order[k]:04d}.dcm")
        ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.PatientName = patient_id, patient_id
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.StudyDate = ds.SeriesDate = now.strftime("%Y%m%d")
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", series_number, k + 1
        ds.SeriesDescription = "oneshot_d2 phantom"
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.ImagePositionPatient = [float(origin[0]), float(origin[1]),
                                   float(origin[2]) + k * float(spacing[2])]
        ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = image.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "HU"
        ds.WindowCenter, ds.WindowWidth = -600, 1500
        stored = np.clip(np.rint((image - intercept) / slope), -32768, 32767).astype("<i2")
        ds.PixelData = stored.tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
