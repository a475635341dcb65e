"""The project's own errors, one root (`OvrsisError`), in the one module every package may import.

An `OvrsisError` is a problem with an input or the environment that its message explains: the error
boundary (`pipeline.cli.terminal.run_command`) prints it as one `error:` line, verbatim, and exits 2.
Anything else that escapes a command is a bug (exit 70). The kinds live here, not beside the code
that raises them, so that catching one imports nothing heavy (an `IngestError` defined beside rasterio
made its catchers import GDAL). Each kind keeps the builtin base it always had (ValueError,
RuntimeError), so code that catches those still catches it.
"""

from __future__ import annotations


class OvrsisError(Exception):
    """A problem the message explains (a file, a value, a server), not a bug."""


# taxonomy
class TaxonomyError(OvrsisError, ValueError):
    """A taxonomy file that cannot be used; the message names the file and line."""


# pipeline
class ModelOutputError(OvrsisError, RuntimeError):
    """A model returned what its stage cannot use (no caption, too few results); the tile is quarantined."""


class BuildConfigError(OvrsisError, ValueError):
    """A configuration that cannot run; raised before any model loads."""


class UnsafeName(OvrsisError, ValueError):
    """A name from data that would leave its folder, or could not be a file name at all."""


class OutputBusy(OvrsisError, RuntimeError):
    """Another process is writing this output folder (a build or an annotate run)."""


class IngestError(OvrsisError, ValueError):
    """A raster that cannot be tiled; the message says why."""


class LabelRasterError(OvrsisError, ValueError):
    """A label raster that cannot label its image: unreadable, another grid, not one band of integers."""


class CaptionError(OvrsisError, ValueError):
    """A caption that cannot be parsed as English text."""


class ShardError(OvrsisError, ValueError):
    """Shards that do not match their manifest or the reader's expectations."""


class ShardImportError(OvrsisError, ValueError):
    """The source cannot be imported at all (no pairs, an unknown layout, a bad value map)."""


class ExportError(OvrsisError, ValueError):
    """The output folder cannot be exported as asked (the message names the file)."""


class GalleryError(OvrsisError, ValueError):
    """The folder cannot be shown: not an output folder, or its gallery folder is not one this module wrote."""


# audit
class AuditError(OvrsisError, RuntimeError):
    """An audit operation that cannot go on; the message says why and what to do."""


class TaskError(AuditError):
    """A task the ML backend cannot answer. Its message is sent back to the client, so it names nothing
    of this machine (no path, host, port or OS error); the details go to the backend's log."""


class ImageRefused(OvrsisError, ValueError):
    """An image the ML backend will not read (the message, for the backend's log, says why)."""


class LineTooLong(OvrsisError, ValueError):
    """A line of the review ledger (or its side files) longer than a line may be: no review is that long."""


class TaskSetAside(OvrsisError, ValueError):
    """A Label Studio task (or one of its annotations) in a shape no review can be made of; a pull goes on
    without it."""


class ReviewShapeError(OvrsisError, ValueError):
    """The annotation does not fit the tile (another size, an unknown label, a malformed region)."""


class ProposalMissing(OvrsisError, RuntimeError):
    """Neither mask file of a tile holds the proposal its record names (a killed build, files edited)."""


# piseg
class ConfigError(OvrsisError, ValueError):
    """A Pi-Seg configuration file or value that cannot be used."""


class CheckpointError(OvrsisError, ValueError):
    """A checkpoint that cannot be used for what was asked."""


class ReleasedCheckpointError(OvrsisError, ValueError):
    """A released checkpoint that cannot be converted, with the reason."""


class DatasetError(OvrsisError, ValueError):
    """A benchmark dataset definition or a dataset's files that cannot be evaluated."""


class PlanError(OvrsisError, ValueError):
    """A weights folder or plan that names no run, or a run that cannot be set up."""


class TrainingError(OvrsisError, RuntimeError):
    """Training cannot go on (NaN loss, unusable inputs)."""
