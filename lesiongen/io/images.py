"""Reading and writing 3D medical images with their full geometry.

Arrays are numpy arrays in SimpleITK's index order ``(z, y, x)``; every spacing that travels with an array
(fingerprint, plans, preprocessing) is in that same order. :class:`ImageGeometry` keeps what is needed to write
an array back exactly where it came from: ITK spacing, origin and direction (LPS), and the array shape.

Two back-ends read the same files into the same convention: SimpleITK (all formats, the default) and nibabel
(NIfTI only, chosen by ``overwrite_image_reader_writer: NibabelIO`` as in nnU-Net).
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lesiongen.utilities.errors import FileError
from lesiongen.utilities.files import atomic_path

SUPPORTED_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
NIFTI_ENDINGS = (".nii.gz", ".nii")
SIMPLEITK = "SimpleITKIO"
NIBABEL = "NibabelIO"
# nnU-Net reader names lesiongen accepts; the reorienting variant is read like NibabelIO (see raw spec)
READER_ALIASES = {
    "SimpleITKIO": SIMPLEITK,
    "NibabelIO": NIBABEL,
    "NibabelIOWithReorient": NIBABEL,
}

# LPS (ITK) <-> RAS (NIfTI/nibabel) flips the first two world axes
_LPS_RAS = np.diag([-1.0, -1.0, 1.0])

# Limits a header must respect before any voxel is read. A header can claim any shape; trusting it would allocate
# whatever it says (a MemoryError, or swapping) before the file turns out short. 2**31 voxels (1290^3) is over ten
# times any brain scan (a 0.5 mm whole head is ~500^3 = 1.25e8 voxels); 8 GiB is 2**31 voxels of float32, so the
# byte limit only bites for wider types (float64, int64), whose arrays lesiongen would copy to float32 anyway.
MAX_VOXELS = 2**31
MAX_BYTES = 8 * 2**30
SPATIAL_DIMS = 3  # lesiongen handles scalar 3D images only (no time series, no vector images)


@dataclass(frozen=True)
class ImageGeometry:
    """Where an image lies in the world. ITK conventions: spacing/origin in (x, y, z), direction row-major."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    shape: tuple[int, int, int]  # array order (z, y, x)

    @classmethod
    def simple(
        cls,
        shape_zyx: tuple[int, int, int],
        spacing_zyx: tuple[float, float, float],
        origin_xyz: tuple[float, float, float] = (0.0, 0.0, 0.0),
    ) -> ImageGeometry:
        """An axis-aligned geometry from an array shape and a spacing in array order."""
        return cls(
            spacing=tuple(float(s) for s in spacing_zyx[::-1]),
            origin=tuple(float(o) for o in origin_xyz),
            direction=tuple(float(v) for v in np.eye(3).ravel()),
            shape=tuple(int(s) for s in shape_zyx),
        )

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return tuple(self.spacing[::-1])

    def with_shape(self, shape_zyx: tuple[int, ...]) -> ImageGeometry:
        return ImageGeometry(self.spacing, self.origin, self.direction, tuple(int(s) for s in shape_zyx))

    def matches(self, other: ImageGeometry, rtol: float = 1e-4, atol: float = 1e-4) -> str | None:
        """None when both describe the same grid, else what differs (for one-line error messages)."""
        if self.shape != other.shape:
            return f"shape {_fmt(self.shape)} differs from {_fmt(other.shape)}"
        if not np.allclose(self.spacing, other.spacing, rtol=rtol, atol=0):
            return f"spacing {_fmt(self.spacing)} differs from {_fmt(other.spacing)}"
        if not np.allclose(self.direction, other.direction, rtol=0, atol=atol):
            return f"direction {_fmt(self.direction)} differs from {_fmt(other.direction)}"
        # origins are compared relative to the voxel size, like the spacing
        if not np.allclose(self.origin, other.origin, rtol=0, atol=max(atol, rtol * max(self.spacing) * 10)):
            return f"origin {_fmt(self.origin)} differs from {_fmt(other.origin)}"
        return None

    def to_json(self) -> dict:
        return {
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
            "shape": list(self.shape),
        }

    @classmethod
    def from_json(cls, d: dict) -> ImageGeometry:
        return cls(
            spacing=tuple(float(v) for v in d["spacing"]),
            origin=tuple(float(v) for v in d["origin"]),
            direction=tuple(float(v) for v in d["direction"]),
            shape=tuple(int(v) for v in d["shape"]),
        )


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in values) + ")"


def file_ending(path: str | Path) -> str:
    name = Path(path).name.lower()
    for ending in SUPPORTED_ENDINGS:
        if name.endswith(ending):
            return ending
    return Path(path).suffix


def resolve_reader(requested: str | None, path: str | Path) -> str:
    if requested is None:
        return SIMPLEITK
    reader = READER_ALIASES.get(requested)
    if reader is None:
        raise FileError(path, f"unknown image reader {requested!r}; use one of {sorted(READER_ALIASES)}")
    if reader == NIBABEL and file_ending(path) not in NIFTI_ENDINGS:
        raise FileError(path, f"{requested} reads NIfTI only, not {file_ending(path)}")
    return reader


# ------------------------------------------------------------------------------------------- header check


def _header_values(values) -> str:
    return "(" + ", ".join(f"{float(v):g}" if isinstance(v, float) else str(v) for v in values) + ")"


def check_header(path: str | Path, shape: tuple[int, ...], bytes_per_voxel: int,
                 spacing: tuple[float, ...] | None = None) -> None:
    """Refuse a header whose shape, size or spacing no voxel read should be attempted with.

    ``shape`` and ``spacing`` are in the header's own order (x first); the message quotes them as the file states
    them, so the user can find the field. Runs before any voxel is read, so a lying header costs nothing.
    """
    claim = f"header claims shape {_header_values(shape)}"
    if len(shape) > SPATIAL_DIMS:
        raise FileError(path, f"{claim} — {len(shape)} dimensions; lesiongen reads {SPATIAL_DIMS}D images only")
    if any(int(n) < 1 for n in shape):
        raise FileError(path, f"{claim} — every dimension must be at least 1")
    voxels = math.prod(int(n) for n in shape)
    if voxels > MAX_VOXELS:
        raise FileError(path, f"{claim} — {voxels:,} voxels, more than the limit of {MAX_VOXELS:,}")
    if voxels * bytes_per_voxel > MAX_BYTES:
        raise FileError(path, f"{claim} — {voxels * bytes_per_voxel / 2**30:.3g} GiB of voxel data, more than the "
                              f"limit of {MAX_BYTES / 2**30:g} GiB")
    if spacing is not None and not all(math.isfinite(s) and s > 0 for s in spacing):
        raise FileError(path, f"header claims spacing {_header_values(spacing)} — every spacing must be finite "
                              f"and > 0")


# --------------------------------------------------------------------------------------------- SimpleITK


def _sitk():
    import SimpleITK as sitk  # imported lazily: worker processes that never touch images stay light

    return sitk


def _geometry_from_sitk(img) -> ImageGeometry:
    size = img.GetSize()
    return ImageGeometry(
        spacing=tuple(float(s) for s in img.GetSpacing()),
        origin=tuple(float(o) for o in img.GetOrigin()),
        direction=tuple(float(d) for d in img.GetDirection()),
        shape=tuple(int(s) for s in size[::-1]),
    )


def _check_dimension(path, dimension: int, components: int) -> None:
    if components != 1:
        raise FileError(path, f"has {components} components per voxel; expected a scalar image")
    if dimension != 3:
        raise FileError(path, f"is {dimension}D; expected a 3D image")


def _sitk_bytes_per_voxel(reader) -> int:
    """Bytes per voxel of the pixel type a header declares (a one-voxel image of that type tells)."""
    sitk = _sitk()
    try:
        probe = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID(), reader.GetNumberOfComponents())
    except (RuntimeError, TypeError, ValueError):
        return 1  # a pixel type SimpleITK cannot build: the voxel limit still applies, ReadImage will say the rest
    return int(probe.GetSizeOfPixelComponent()) * int(reader.GetNumberOfComponents())


def _sitk_read_geometry(path: Path) -> ImageGeometry:
    if file_ending(path) in NIFTI_ENDINGS:
        _nib_load_checked(path)  # nibabel reads the voxels later; its view of the header must be sane too
    sitk = _sitk()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise FileError(path, f"unreadable image header ({_first_line(exc)})") from None
    _check_dimension(path, reader.GetDimension(), reader.GetNumberOfComponents())
    size = reader.GetSize()
    check_header(path, tuple(int(n) for n in size), _sitk_bytes_per_voxel(reader),
                 tuple(float(v) for v in reader.GetSpacing()))
    if not all(math.isfinite(float(v)) for v in (*reader.GetOrigin(), *reader.GetDirection())):
        raise FileError(path, "header claims a non-finite origin or direction")
    return ImageGeometry(
        spacing=tuple(float(s) for s in reader.GetSpacing()),
        origin=tuple(float(o) for o in reader.GetOrigin()),
        direction=tuple(float(d) for d in reader.GetDirection()),
        shape=tuple(int(s) for s in size[::-1]),
    )


def _sitk_read(path: Path) -> tuple[np.ndarray, ImageGeometry]:
    if file_ending(path) in NIFTI_ENDINGS:
        # ITK's NIfTI reader silently turns NaN into 0, which would hide broken scans from the integrity
        # check; nibabel reads the same voxel order untouched, so ITK gives the geometry and nibabel the voxels
        geometry = _sitk_read_geometry(path)
        array = _nib_voxels(path, _nib_load(path))
        if array.shape != geometry.shape:
            raise FileError(path, f"voxel data shape {array.shape} disagrees with the header {geometry.shape}")
        return array, geometry
    _sitk_read_geometry(path)  # header limits first: ReadImage would allocate whatever the header claims
    sitk = _sitk()
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise FileError(path, f"unreadable or truncated image ({_first_line(exc)})") from None
    _check_dimension(path, img.GetDimension(), img.GetNumberOfComponentsPerPixel())
    _check_complete(path, int(np.prod(img.GetSize())) * img.GetSizeOfPixelComponent())
    return sitk.GetArrayFromImage(img), _geometry_from_sitk(img)


def _sitk_write(path: Path, array: np.ndarray, geometry: ImageGeometry) -> None:
    sitk = _sitk()
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(geometry.spacing)
    img.SetOrigin(geometry.origin)
    img.SetDirection(geometry.direction)
    sitk.WriteImage(img, str(path), useCompression=True)


def _check_nifti_written(tmp: Path, final: Path, data_bytes: int) -> None:
    """A NIfTI file just written holds all its bytes. ITK's NIfTI writer reports a full disk only on stderr
    ("NWAD: wrote only N of M bytes") and returns normally; without this check a truncated file would be renamed
    into place. Cheap: the header's ``vox_offset`` and, for .nii.gz, gzip's trailer (uncompressed size mod 2**32)."""
    compressed = tmp.name.endswith(".gz")
    try:
        with (gzip.open(tmp, "rb") if compressed else open(tmp, "rb")) as handle:
            header = handle.read(348)
        order = "<" if int.from_bytes(header[:4], "little") == 348 else ">"
        expected = int(np.frombuffer(header[108:112], dtype=f"{order}f4")[0]) + data_bytes
        if compressed:
            with open(tmp, "rb") as handle:
                handle.seek(-4, os.SEEK_END)
                complete = int.from_bytes(handle.read(4), "little") == expected % 2**32
        else:
            complete = tmp.stat().st_size >= expected
    except (OSError, EOFError, ValueError, IndexError):
        complete = False
    if not complete:
        raise FileError(final, "could not be written completely (no space left on device?)")


def _check_complete(path: Path, data_bytes: int) -> None:
    """Detect truncated MetaImage / NRRD files, which ITK may read without complaint."""
    with open(path, "rb") as handle:
        head = handle.read(4096).decode("latin-1").lower()
    compressed = "compresseddata = true" in head or "encoding: gz" in head or "encoding: bz" in head
    detached = "elementdatafile = " in head and "elementdatafile = local" not in head
    if not (compressed or detached or path.stat().st_size >= data_bytes):
        raise FileError(path, "truncated image (file ends before all voxels)")


# ----------------------------------------------------------------------------------------------- nibabel


def _geometry_from_affine(affine: np.ndarray, shape_xyz: tuple[int, ...]) -> ImageGeometry:
    lps = _LPS_RAS @ affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    direction = lps / spacing
    origin = _LPS_RAS @ affine[:3, 3]
    return ImageGeometry(
        spacing=tuple(float(s) for s in spacing),
        origin=tuple(float(o) for o in origin),
        direction=tuple(float(d) for d in direction.ravel()),
        shape=tuple(int(s) for s in shape_xyz[::-1]),
    )


def _affine_from_geometry(geometry: ImageGeometry) -> np.ndarray:
    direction = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_RAS @ (direction * np.asarray(geometry.spacing, dtype=float))
    affine[:3, 3] = _LPS_RAS @ np.asarray(geometry.origin, dtype=float)
    return affine


def _nib_load(path: Path):
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for bad headers
        raise FileError(path, f"unreadable image header ({_first_line(exc)})") from None


def _nib_load_checked(path: Path):
    """The nibabel image of ``path`` after its header passed :func:`check_header` (no voxel is read yet)."""
    img = _nib_load(path)
    _check_dimension(path, len(img.shape), 1)
    spacing = np.linalg.norm(np.asarray(img.affine, dtype=float)[:3, :3], axis=0)
    check_header(path, tuple(int(n) for n in img.shape), int(img.get_data_dtype().itemsize),
                 tuple(float(v) for v in spacing))
    if not np.all(np.isfinite(img.affine)):
        raise FileError(path, "header claims a non-finite origin or direction")
    return img


def _nib_read_geometry(path: Path) -> ImageGeometry:
    img = _nib_load_checked(path)
    return _geometry_from_affine(img.affine, img.shape)


def _nib_voxels(path: Path, img) -> np.ndarray:
    _check_dimension(path, len(img.shape), 1)
    try:
        data = np.asanyarray(img.dataobj)
    except (EOFError, OSError, ValueError, zlib.error, gzip.BadGzipFile) as exc:
        raise FileError(path, f"unreadable or truncated image ({_first_line(exc)})") from None
    # NIfTI stores x fastest; transposing gives ITK's (z, y, x) index order
    return np.ascontiguousarray(data.transpose(2, 1, 0))


def _nib_read(path: Path) -> tuple[np.ndarray, ImageGeometry]:
    img = _nib_load_checked(path)
    return _nib_voxels(path, img), _geometry_from_affine(img.affine, img.shape)


def _nib_write(path: Path, array: np.ndarray, geometry: ImageGeometry) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), _affine_from_geometry(geometry))
    img.header.set_xyzt_units("mm")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, str(path))


# ----------------------------------------------------------------------------------------------- public


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    # ITK messages put the useful part last
    useful = [line.strip() for line in text if line.strip()]
    return useful[-1][:200] if useful else type(exc).__name__


def _check_path(path: Path) -> None:
    if not path.is_file():
        raise FileError(path, "file not found")
    if file_ending(path) not in SUPPORTED_ENDINGS:
        raise FileError(path, f"unsupported file type {file_ending(path)!r}; supported: {', '.join(SUPPORTED_ENDINGS)}")


def read_geometry(path: str | Path, reader: str | None = None) -> ImageGeometry:
    """Read only the header of a 3D image (cheap)."""
    path = Path(path)
    _check_path(path)
    if resolve_reader(reader, path) == NIBABEL:
        return _nib_read_geometry(path)
    return _sitk_read_geometry(path)


def read_image(path: str | Path, reader: str | None = None) -> tuple[np.ndarray, ImageGeometry]:
    """Read a 3D image as a ``(z, y, x)`` array with its geometry."""
    path = Path(path)
    _check_path(path)
    if resolve_reader(reader, path) == NIBABEL:
        return _nib_read(path)
    return _sitk_read(path)


def read_channels(paths: list[str | Path], reader: str | None = None) -> tuple[np.ndarray, ImageGeometry]:
    """Read the channels of one case into a float32 ``(c, z, y, x)`` array; all must share one geometry."""
    arrays = []
    geometry = None
    for path in paths:
        array, geo = read_image(path, reader)
        if geometry is None:
            geometry = geo
        else:
            mismatch = geo.matches(geometry)
            if mismatch:
                raise FileError(path, f"{mismatch} of {Path(paths[0]).name}")
        arrays.append(array.astype(np.float32, copy=False))
    return np.stack(arrays), geometry


def write_image(path: str | Path, array: np.ndarray, geometry: ImageGeometry, reader: str | None = None) -> None:
    """Write a ``(z, y, x)`` array with ``geometry`` atomically; the format follows the file ending."""
    path = Path(path)
    if tuple(array.shape) != tuple(geometry.shape):
        raise ValueError(f"array shape {array.shape} does not match geometry shape {geometry.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    with atomic_path(path) as tmp:
        if resolve_reader(reader, path) == NIBABEL:
            _nib_write(tmp, array, geometry)
        else:
            _sitk_write(tmp, array, geometry)
        if file_ending(path) in NIFTI_ENDINGS:
            _check_nifti_written(tmp, path, array.nbytes)
