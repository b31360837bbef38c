"""A minimal DICOM writer for synthetic data and tests: uncompressed MONOCHROME2 16-bit, one or more frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["write_dicom"]


def write_dicom(
    path: str | Path,
    frames: np.ndarray,
    frame_time_ms: float | None = None,
    acq_time: str | None = None,
    instance: int = 1,
) -> Path:
    """Write ``frames`` ``(H, W)`` or ``(n, H, W)`` (uint16) as an X-ray angiographic DICOM.

    Args:
        frame_time_ms: ``FrameTime`` of a multi-frame file (ms per frame).
        acq_time: ``AcquisitionTime`` (``HHMMSS[.ffffff]``) of a series image.
        instance: ``InstanceNumber``.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    arr = np.asarray(frames, dtype=np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.12.1"  # X-ray angiographic image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.InstanceNumber = "XA", instance
    ds.Rows, ds.Columns = arr.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if arr.ndim == 3:
        ds.NumberOfFrames = arr.shape[0]
    if frame_time_ms is not None:
        ds.FrameTime = frame_time_ms
    if acq_time is not None:
        ds.AcquisitionTime = acq_time
    ds.PixelData = arr.tobytes()
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    return Path(path)
