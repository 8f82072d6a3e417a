"""Task tables: the 19 VTAB-1k tasks (facts from the VTAB-1k reference table) and suites."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UsageError
from ..util import did_you_mean

GROUPS = ("natural", "specialized", "structured")
DEFAULT_SUITE = "mini"  # every command's default (run, methods, tasks, inspect): built in, needs no download


@dataclass(frozen=True)
class TaskSpec:
    """One task. ``native_resolution`` is written width×height, as image tools print sizes
    (PIL's ``Image.size``): "480x320" is a landscape image 480 pixels wide; "variable" when
    the images differ."""

    name: str
    num_classes: int
    group: str
    test_size: int
    native_resolution: str
    aliases: tuple[str, ...] = field(default=())
    # sizes of the training and validation splits (VTAB-1k: train800, val200; their union is train800val200)
    train_val: tuple[int, int] = (800, 200)
    # "noah": <folder>/{train800,val200,train800val200,test}.txt; "fgvc": <folder>/{train,val,test}.json
    # (image path relative to <folder>/<image_root> -> class id), read by data/fgvc.py
    layout: str = "noah"
    image_root: str = ""

    @property
    def native_size(self) -> tuple[int, int] | None:
        """(width, height) of every image, or None when the sizes vary."""
        if "x" not in self.native_resolution:
            return None
        width, height = (int(v) for v in self.native_resolution.split("x"))
        return width, height

    @property
    def folder_names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


def _t(name, classes, group, test, native, *aliases) -> TaskSpec:
    return TaskSpec(name, classes, group, test, native, tuple(aliases))


# VTAB order (natural, specialized, structured) as in the papers' tables; sizes width×height
# (clevr frames are 480 wide, 320 high; dmlab frames 480 wide, 360 high).
VTAB1K: tuple[TaskSpec, ...] = (
    _t("cifar100", 100, "natural", 10_000, "32x32", "cifar"),
    _t("caltech101", 102, "natural", 6_084, "variable"),
    _t("dtd", 47, "natural", 1_880, "variable"),
    _t("oxford_flowers102", 102, "natural", 6_149, "variable"),
    _t("oxford_pet", 37, "natural", 3_669, "variable", "oxford_iiit_pet"),
    _t("svhn", 10, "natural", 26_032, "32x32"),
    _t("sun397", 397, "natural", 21_750, "variable"),
    _t("patch_camelyon", 2, "specialized", 32_768, "96x96"),
    _t("eurosat", 10, "specialized", 5_400, "64x64"),
    _t("resisc45", 45, "specialized", 6_300, "256x256"),
    _t("diabetic_retinopathy", 5, "specialized", 42_670, "variable",
       "diabetic_retinopathy_detection"),
    _t("clevr_count", 8, "structured", 15_000, "480x320"),
    _t("clevr_dist", 6, "structured", 15_000, "480x320"),
    _t("dmlab", 6, "structured", 22_735, "480x360"),
    _t("kitti", 4, "structured", 711, "variable"),
    _t("dsprites_loc", 16, "structured", 73_728, "64x64"),
    _t("dsprites_ori", 16, "structured", 73_728, "64x64"),
    _t("smallnorb_azi", 18, "structured", 12_150, "96x96"),
    _t("smallnorb_ele", 9, "structured", 12_150, "96x96"),
)

# FGVC: five fine-grained tasks with the VPT authors' split files (train/val/test.json; val carved from the
# official training set where the data set has none). Sizes train, val, test as in those files (VPT, Table 8).
FGVC: tuple[TaskSpec, ...] = (
    TaskSpec("cub200", 200, "fgvc", 5_794, "variable", ("CUB_200_2011", "CUB", "cub"), (5_394, 600), "fgvc",
             "images"),
    TaskSpec("nabirds", 555, "fgvc", 24_633, "variable", ("NABirds", "nabird"), (21_536, 2_393), "fgvc", "images"),
    TaskSpec("oxford_flowers", 102, "fgvc", 6_149, "variable", ("OxfordFlowers", "flowers", "flowers102"),
             (1_020, 1_020), "fgvc", ""),
    TaskSpec("stanford_dogs", 120, "fgvc", 8_580, "variable", ("StanfordDogs", "dogs", "Stanford_Dogs"),
             (10_800, 1_200), "fgvc", "Images"),
    TaskSpec("stanford_cars", 196, "fgvc", 8_041, "variable", ("StanfordCars", "cars", "Stanford_Cars"),
             (7_329, 815), "fgvc", ""),
)

SUITES: dict[str, tuple[TaskSpec, ...]] = {"vtab1k": VTAB1K, "fgvc": FGVC}


def register_suite(name: str, tasks: tuple[TaskSpec, ...]) -> None:
    SUITES[name] = tasks


# suites defined in their own module, imported (and so registered) on first use
BUILTIN_SUITE_MODULES = {"mini": "peftbench.data.mini"}


def suite_tasks(suite: str) -> tuple[TaskSpec, ...]:
    if suite not in SUITES and suite in BUILTIN_SUITE_MODULES:
        import importlib

        importlib.import_module(BUILTIN_SUITE_MODULES[suite])
    if suite not in SUITES:
        known = sorted(set(SUITES) | set(BUILTIN_SUITE_MODULES))
        raise UsageError(f"unknown suite '{suite}'" + did_you_mean(suite, known) + f" (suites: {', '.join(known)})")
    return SUITES[suite]


def resolve_tasks(spec: str, suite: str = "vtab1k") -> list[TaskSpec]:
    """'all' or a comma list of canonical names or aliases -> task specs, in suite order."""
    table = suite_tasks(suite)
    if spec.strip() in ("", "all"):
        return list(table)
    by_name = {alias: t for t in table for alias in t.folder_names}
    out: list[TaskSpec] = []
    for name in (s.strip() for s in spec.split(",") if s.strip()):
        if name not in by_name:
            raise UsageError(f"unknown task '{name}' in suite '{suite}'" + did_you_mean(name, sorted(by_name))
                             + f" (tasks: {', '.join(t.name for t in table)}; or 'all')")
        if by_name[name] not in out:
            out.append(by_name[name])
    return out


def known_suites() -> list[str]:
    return sorted(set(SUITES) | set(BUILTIN_SUITE_MODULES))


def check_suite(suite: str) -> str:
    """``suite`` if it names a known suite, else one UsageError listing the suites."""
    suite_tasks(suite)
    return suite


def infer_suite(spec: str | None, default: str) -> str:
    """The suite of the tasks in ``spec`` (a comma list, or 'all' / None), for a command given no --suite.

    The one suite that holds every named task (by name or alias); ``default`` for 'all', for names no
    suite knows (the default suite's own error then names them) and for names the default holds. A name
    that several suites hold, or tasks of different suites, is one UsageError listing the suites.
    """
    names = [s.strip() for s in (spec or "").split(",") if s.strip()]
    if not names or names == ["all"]:
        return default
    holders = {}
    for name in names:
        holders[name] = [s for s in known_suites() if any(name in t.folder_names for t in suite_tasks(s))]
        if not holders[name]:
            return default
    for name, suites in holders.items():
        if len(suites) > 1:
            raise UsageError(f"task '{name}' belongs to several suites ({', '.join(suites)}): give --suite NAME")
    found = sorted({h[0] for h in holders.values()})
    if len(found) > 1:
        raise UsageError("tasks of different suites: " + "; ".join(
            f"{s}: {', '.join(n for n, h in holders.items() if h[0] == s)}" for s in found) + "; give --suite NAME")
    return found[0]

