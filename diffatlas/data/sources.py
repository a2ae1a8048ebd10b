"""Raw dataset layouts: find the cases of a raw folder and say how to read each one's label.

Every reader returns ``(cases, skipped)``: ``RawCase`` records for the cases it can prepare and
``(case id, reason)`` for the ones it cannot (missing files or structures). Layouts (see
``data/README.md`` for where each dataset comes from):

* ``mmwhs``: ``<ct|mr>_train_1001_image.nii.gz`` beside ``<ct|mr>_train_1001_label.nii.gz``, searched
  recursively. Label codes 205 Myo, 500 LV, 420 LA, 550 RA, 600 RV become 1..5; 820 (aorta) and 850
  (pulmonary artery) become background.
* ``totalsegmentator``: one folder per subject holding ``ct.nii.gz`` and ``segmentations/<structure>.nii.gz``
  binary masks. The five heart files keep the same names in the v1 dataset release and in the
  ``heartchambers_highres`` task of v2 (``heart_myocardium``, ``heart_ventricle_left``, ``heart_atrium_left``,
  ``heart_atrium_right``, ``heart_ventricle_right``); a subject with only v2's single ``heart.nii.gz`` has no
  chambers and is skipped.
* ``nnunet``: ``imagesTr/<case>_0000<ending>``, ``labelsTr/<case><ending>`` and ``dataset.json`` whose
  ``labels`` (v2: name -> value, v1: value -> name) name the structures; any label set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from diffatlas.data.caseids import case_id_problem
from diffatlas.data.io import read_json_object

MMWHS_CODES = {205: "Myo", 500: "LV", 420: "LA", 550: "RA", 600: "RV"}
MMWHS_DROPPED = (820, 850)
HEART = ("Myo", "LV", "LA", "RA", "RV")
TOTALSEG_FILES = {
    "Myo": "heart_myocardium",
    "LV": "heart_ventricle_left",
    "LA": "heart_atrium_left",
    "RA": "heart_atrium_right",
    "RV": "heart_ventricle_right",
}


@dataclass
class RawCase:
    """One raw case.

    Attributes:
        case: the case id used in the prepared data.
        image: the scan file.
        label: one label file whose values ``label_values`` maps to 1..K (other values become background),
            or None.
        structure_files: per-structure binary mask files ``{k: path}`` (TotalSegmentator), instead of ``label``.
    """

    case: str
    image: Path
    label: Path | None = None
    label_values: dict[int, int] = field(default_factory=dict)
    structure_files: dict[int, Path] = field(default_factory=dict)

    @property
    def has_label(self) -> bool:
        return self.label is not None or bool(self.structure_files)


Found = tuple[list[RawCase], list[tuple[str, str]]]


def _existing_dir(raw_dir: str | Path, what: str) -> Path:
    root = Path(raw_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {root}")
    return root


def mmwhs_cases(raw_dir: str | Path, modality: str) -> Found:
    """MM-WHS cases of one modality (``ct`` or ``mr``) anywhere under ``raw_dir``."""
    if modality not in ("ct", "mr"):
        raise ValueError(f"MM-WHS modality must be 'ct' or 'mr', got {modality!r}")
    root = _existing_dir(raw_dir, "MM-WHS")
    pattern = re.compile(rf"^({modality}_(?:train|test)_\d+)_image\.nii(?:\.gz)?$")
    values = {code: HEART.index(name) + 1 for code, name in MMWHS_CODES.items()}
    cases: list[RawCase] = []
    skipped: list[tuple[str, str]] = []
    for image in sorted(root.rglob(f"{modality}_*_image.nii*")):
        match = pattern.match(image.name)
        if not match:
            continue
        case = match.group(1)
        label = image.with_name(image.name.replace("_image", "_label"))
        if not label.is_file():
            skipped.append((case, f"no label file {label.name} beside the image"))
            continue
        cases.append(RawCase(case, image, label=label, label_values=values))
    if not cases and not skipped:
        raise FileNotFoundError(f"no MM-WHS {modality} images (<{modality}>_train_NNNN_image.nii.gz) under {root}")
    return cases, skipped


def totalsegmentator_cases(raw_dir: str | Path, structures: Sequence[str] = HEART) -> Found:
    """TotalSegmentator subjects (``<raw_dir>/<subject>/ct.nii.gz`` + ``segmentations/``)."""
    root = _existing_dir(raw_dir, "TotalSegmentator")
    unknown = [s for s in structures if s not in TOTALSEG_FILES]
    if unknown:
        raise ValueError(f"no TotalSegmentator file for structures {unknown}; known: {list(TOTALSEG_FILES)}")
    cases: list[RawCase] = []
    skipped: list[tuple[str, str]] = []
    subjects = sorted(p for p in root.iterdir() if p.is_dir() and (p / "ct.nii.gz").is_file())
    if not subjects:
        raise FileNotFoundError(f"no subject folders with ct.nii.gz under {root}")
    for subject in subjects:
        problem = case_id_problem(subject.name)
        if problem:
            skipped.append((subject.name, f"folder name {problem}; it cannot be a case id"))
            continue
        seg = subject / "segmentations"
        files = {k + 1: seg / f"{TOTALSEG_FILES[name]}.nii.gz" for k, name in enumerate(structures)}
        missing = [path.name for path in files.values() if not path.is_file()]
        if missing:
            reason = "no heart chamber files" if len(missing) == len(files) else f"missing {', '.join(missing)}"
            if (seg / "heart.nii.gz").is_file() and len(missing) == len(files):
                reason += " (only the combined heart.nii.gz of the v2 release)"
            skipped.append((subject.name, reason))
            continue
        cases.append(RawCase(subject.name, subject / "ct.nii.gz", structure_files=files))
    return cases, skipped


def _nnunet_json(raw_dir: str | Path) -> tuple[Path, dict]:
    path = Path(raw_dir) / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"no dataset.json in {raw_dir} (an nnU-Net raw folder has imagesTr, labelsTr and "
                                "dataset.json)")
    return path, read_json_object(path)


def _label_value(path: Path, name: str, value: object) -> int:
    if isinstance(value, bool) or isinstance(value, (list, tuple)):
        raise ValueError(f"{path}: label {name!r} has value {value!r}; region-based labels are not supported")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise ValueError(f"{path}: label {name!r} has value {value!r}; label values must be integers")


def nnunet_labels(raw_dir: str | Path) -> dict[str, int]:
    """The structures of an nnU-Net raw dataset, ``{name: value}`` without background, by value.

    ``labels`` maps names to integer values (v2; values written as digit strings are accepted) or values to
    names (v1)."""
    path, info = _nnunet_json(raw_dir)
    labels = info.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"{path}: 'labels' must be an object such as {{\"background\": 0, \"LV\": 1}}, "
                         f"got {labels!r}")
    if all(str(k).strip().isdigit() for k in labels):
        pairs = {str(name): int(value) for value, name in labels.items()}
    else:
        pairs = {str(name): _label_value(path, str(name), value) for name, value in labels.items()}
    if len(set(pairs.values())) != len(pairs):
        raise ValueError(f"{path}: two labels share one value in {labels!r}")
    return {name: value for name, value in sorted(pairs.items(), key=lambda kv: kv[1]) if value != 0}


def nnunet_file_ending(raw_dir: str | Path) -> str:
    """The ``file_ending`` of an nnU-Net raw folder's ``dataset.json`` (default ``.nii.gz``), checked to be a
    plain image suffix."""
    path, info = _nnunet_json(raw_dir)
    ending = info.get("file_ending", ".nii.gz")
    if ending not in (".nii.gz", ".nii", ".nrrd", ".mha"):
        raise ValueError(f"{path}: 'file_ending' must be one of .nii.gz, .nii, .nrrd, .mha; got {ending!r}")
    return ending


def nnunet_cases(raw_dir: str | Path, structures: Sequence[str] | None = None, channel: int = 0) -> Found:
    """Cases of an nnU-Net raw folder; ``structures`` picks and orders a subset of its labels."""
    root = _existing_dir(raw_dir, "nnU-Net raw")
    labels = nnunet_labels(root)
    chosen = list(structures) if structures else list(labels)
    unknown = [s for s in chosen if s not in labels]
    if unknown:
        raise ValueError(f"structures {unknown} are not labels of {root / 'dataset.json'} ({list(labels)})")
    values = {labels[name]: k + 1 for k, name in enumerate(chosen)}
    ending = nnunet_file_ending(root)
    suffix = f"_{channel:04d}{ending}"
    images = sorted((root / "imagesTr").glob(f"*{suffix}"))
    if not images:
        raise FileNotFoundError(f"no images matching imagesTr/*{suffix} in {root}")
    cases: list[RawCase] = []
    skipped: list[tuple[str, str]] = []
    for image in images:
        case = image.name[: -len(suffix)]
        problem = case_id_problem(case)
        if problem:
            skipped.append((case, f"file name {image.name}: the case id {problem}"))
            continue
        label = root / "labelsTr" / f"{case}{ending}"
        if not label.is_file():
            skipped.append((case, f"no label labelsTr/{label.name}"))
            continue
        cases.append(RawCase(case, image, label=label, label_values=values))
    return cases, skipped


def structure_names(kind: str, raw_dir: str | Path, structures: Sequence[str] | None) -> list[str]:
    """The structure names (label k is names[k - 1]) a layout yields."""
    if kind == "nnunet":
        labels = nnunet_labels(raw_dir)
        return list(structures) if structures else list(labels)
    return list(structures) if structures else list(HEART)


def find_cases(kind: str, raw_dir: str | Path, *, modality: str, structures: Sequence[str] | None = None) -> Found:
    """Dispatch on the layout ``kind`` (``mmwhs``, ``totalsegmentator`` or ``nnunet``)."""
    if kind == "mmwhs":
        if structures and list(structures) != list(HEART):
            raise ValueError(f"MM-WHS structures are fixed to {list(HEART)}")
        return mmwhs_cases(raw_dir, modality)
    if kind == "totalsegmentator":
        return totalsegmentator_cases(raw_dir, structures or HEART)
    if kind == "nnunet":
        return nnunet_cases(raw_dir, structures)
    raise ValueError(f"unknown raw layout {kind!r}; known: mmwhs, totalsegmentator, nnunet, official")
