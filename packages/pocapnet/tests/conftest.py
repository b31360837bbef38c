"""Session fixtures: a small synthetic PoCaP dataset on disk and its tiny-random features (built once).

Every test here runs with ONE intra-op torch thread, restored afterwards (so nothing leaks into other packages'
tests): the workloads are tiny tensors where thread synchronisation dominates, and on a busy 2-core machine the
default thread count made the suite 10-40x slower (measured).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from pocapnet.config import get_config


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed_and_threads() -> Iterator[None]:
    torch.manual_seed(0)
    with one_thread():
        yield


@pytest.fixture(scope="session")
def tiny_cfg():
    return get_config("pocapnet_tiny")


@pytest.fixture(scope="session")
def syn_data(tmp_path_factory) -> Path:
    from pocapnet.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("pocap_data")
    with one_thread():
        make_synthetic_dataset(root, n_ops=4, seconds=(28, 34), seed=3, frame_size=64, progress=False)
    return root


@pytest.fixture(scope="session")
def syn_feats(syn_data, tmp_path_factory, tiny_cfg) -> Path:
    from pocapnet.features import extract_dataset

    out = tmp_path_factory.mktemp("pocap_feats")
    fcfg = dataclasses.replace(tiny_cfg.features, batch_windows=16, bf16=False)
    with one_thread():
        extract_dataset(syn_data, out, fcfg, "cpu", progress=False, require_labels=True)
    return out


def write_dicom(
    path: Path, frames, frame_time_ms: float | None = None, acq_time: str | None = None, instance: int = 1
) -> Path:
    """A minimal uncompressed DICOM (MONOCHROME2, 16-bit) with one or more frames ``(n, H, W)``."""
    import numpy as np
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    arr = np.asarray(frames, dtype=np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.12.1"  # X-ray angiographic image
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
    return path


@pytest.fixture(scope="session")
def dicom_writer():
    """:func:`write_dicom` (test modules cannot import conftest under --import-mode=importlib)."""
    return write_dicom
