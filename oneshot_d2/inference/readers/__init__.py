"""Study readers of the predict feature: one module per input format behind
:class:`~.base.StudyReader`, kept in the registry :data:`READERS` (the order studies are listed
in). Every problem with an input is a :class:`~oneshot_d2.errors.StudyError` whose one-line
message names the file (or folder) and the problem.

* **DICOM** (:mod:`.dicom`): ``.dcm``, ``.dicom`` or any file starting with the DICM preamble;
  one study per SeriesInstanceUID.
* **NIfTI** (:mod:`.nifti`): ``.nii``, ``.nii.gz``; one 3-D CT volume in HU per file.
* **Images** (:mod:`.images`): ``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.tif``, ``.tiff``.

Finding the studies under the user's paths is :mod:`oneshot_d2.inference.discovery`.
"""
from .base import (
    READERS,
    ReadOptions,
    StudyReader,
    file_extension,
    natural_key,
    reader_for,
    register_reader,
    safe_name,
    supported_text,
)
from .dicom import DICOM_EXTENSIONS, DicomReader, is_dicom_file, load_dicom_series
from .images import IMAGE_EXTENSIONS, PNG_HU_OFFSET, ImageReader, load_images
from .nifti import NIFTI_EXTENSIONS, NiftiReader, load_nifti

__all__ = ["READERS", "ReadOptions", "StudyReader", "register_reader", "reader_for",
           "supported_text", "SUPPORTED", "DICOM_EXTENSIONS", "NIFTI_EXTENSIONS",
           "IMAGE_EXTENSIONS", "PNG_HU_OFFSET", "load_dicom_series", "load_nifti",
           "load_images", "natural_key", "safe_name", "file_extension", "is_dicom_file",
           "DicomReader", "NiftiReader", "ImageReader"]

# Registration order = the order of a folder's studies: DICOM series, NIfTI files, image folders.
for _reader in (DicomReader(), NiftiReader(), ImageReader()):
    register_reader(_reader)

# The documented input extensions; besides them, any file that starts with the DICOM "DICM"
# preamble (e.g. extension-less "IM0001") is read as DICOM.
SUPPORTED = DICOM_EXTENSIONS + NIFTI_EXTENSIONS + IMAGE_EXTENSIONS
