"""Small raw scans written on the fly for the preparation tests: SimpleITK images with chosen geometry, box
"hearts" and an ACDC-like nnU-Net raw folder."""

import json

import numpy as np
import SimpleITK as sitk

# a scan stored right-to-left, anterior-to-posterior (so orientation has work to do)
FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def write_scan(array_ijk, path, spacing=(1.0, 1.0, 1.5), origin=(10.0, -20.0, 5.0), direction=FLIPPED,
               pixel=None):
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array_ijk).transpose(2, 1, 0)))
    if pixel is not None:
        image = sitk.Cast(image, pixel)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def heart(values, size=(40, 36, 30), seed=0):
    """A scan (HU-like) and a label with one box per value, boxes side by side along axis 0."""
    rng = np.random.default_rng(seed)
    label = np.zeros(size, dtype=np.int16)
    for n, value in enumerate(values):
        label[8 + 4 * n:12 + 4 * n, 10:24, size[2] // 4:size[2] * 2 // 3] = value
    image = rng.normal(-500.0, 20.0, size).astype(np.float32)
    image[label > 0] = 100.0 + 3.0 * label[label > 0]
    return image, label


def write_nnunet(root, cases=("pat_a", "pat_b")):
    """An ACDC-like nnU-Net raw folder: 10 mm slices, labels RV 1, Myo 2, LV 3."""
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "RV": 1, "Myo": 2, "LV": 3},
                                                   "channel_names": {"0": "MRI"}, "file_ending": ".nii.gz"}))
    for n, case in enumerate(cases):
        image, label = heart((1, 2, 3), size=(48, 44, 8), seed=n)
        image = np.abs(image) * 0.5
        kw = dict(spacing=(1.5, 1.5, 10.0), origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
        write_scan(image, root / "imagesTr" / f"{case}_0000.nii.gz", **kw)
        write_scan(label.astype(np.uint8), root / "labelsTr" / f"{case}.nii.gz", **kw)
