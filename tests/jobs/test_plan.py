"""Planning a cross-validation job: groups, test subjects, rotations, task ids and configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from landseg.cli.main import main
from landseg.config.cross_validation import CrossValidation
from landseg.config.load import load_config, validate_config
from landseg.core.errors import ConfigError, DataError
from landseg.data.csvfiles import read_pairs
from landseg.jobs.plan import (
    Job,
    Row,
    build_plan,
    group_rows,
    natural_key,
    prepare_job,
    sanitize,
    task_config,
    task_csvs,
    write_task_files,
)
from tests.helpers import write_config


def rows(groups: dict[str, int]) -> list[Row]:
    return [
        Row(Path(f"/d/{g}_{i}.tif"), Path(f"/m/{g}_{i}.tif"), g)
        for g, n in groups.items()
        for i in range(n)
    ]


def plan_ids(sizes: dict[str, int], **cv: object) -> list[str]:
    settings = CrossValidation(group_column="zone", **cv)
    plan, _ = build_plan(rows(sizes), settings, percentage_val=0.3)
    return [task.id for task in plan.tasks]


def test_rotations_hold_out_each_group_and_rotate_validation() -> None:
    settings = CrossValidation(group_column="zone")
    plan, used = build_plan(rows({"z3": 2, "z1": 2, "z2": 2}), settings, 0.3)
    assert [t.id for t in plan.tasks] == [
        "test-z1__val-z2",
        "test-z1__val-z3",
        "test-z2__val-z1",
        "test-z2__val-z3",
        "test-z3__val-z1",
        "test-z3__val-z2",
    ]
    first = plan.tasks[0]
    assert (first.test, first.val, first.train) == (("z1",), ("z2",), ("z3",))
    assert (first.rotation, first.rotations, first.subject) == (1, 2, "z1")
    assert plan.subjects == {"z1": ("z1",), "z2": ("z2",), "z3": ("z3",)}
    csvs = task_csvs(first, used)
    assert csvs["test"] == "/d/z1_0.tif,/m/z1_0.tif\n/d/z1_1.tif,/m/z1_1.tif\n"
    assert set(csvs) == {"train", "val", "test"}


def test_one_remaining_group_is_one_rotation_validated_on_a_share() -> None:
    settings = CrossValidation(group_column="zone")
    plan, used = build_plan(rows({"a": 4, "b": 4}), settings, 0.25)
    assert [t.id for t in plan.tasks] == ["test-a__val-split", "test-b__val-split"]
    assert plan.tasks[0].val == () and plan.tasks[0].rotations == 1
    assert set(task_csvs(plan.tasks[0], used)) == {"train", "test"}


def test_fixed_validation_groups_follow_the_test_subject() -> None:
    groups = {"z1": 1, "z2": 1, "z3": 1, "z10": 1}
    assert plan_ids(groups, validation=1) == [
        "test-z1__val-z2",
        "test-z2__val-z3",
        "test-z3__val-z10",
        "test-z10__val-z1",
    ]
    assert plan_ids(groups, validation=2, test_groups=["z3"]) == ["test-z3__val-z1+z10"]
    assert plan_ids({"a": 4, "b": 4, "c": 4}, validation=0) == [
        "test-a__val-split",
        "test-b__val-split",
        "test-c__val-split",
    ]


def test_subject_pairs_and_group_subsets() -> None:
    groups = {"a": 1, "b": 1, "c": 1, "d": 1}
    assert plan_ids(groups, test_groups=[["a", "b"], "c"]) == [
        "test-a+b__val-c",
        "test-a+b__val-d",
        "test-c__val-a",
        "test-c__val-b",
        "test-c__val-d",
    ]
    assert plan_ids(groups, groups=["a", "b", "c"], test_groups=["a"]) == [
        "test-a__val-b",
        "test-a__val-c",
    ]


@pytest.mark.parametrize(
    ("cv", "message"),
    [
        ({"groups": ["a", "x"]}, "cross_validation.groups: unknown group(s) x"),
        ({"test_groups": ["q"]}, "cross_validation.test_groups: unknown group(s) q"),
        ({"test_groups": ["a", "a"]}, "cross_validation.test_groups: a is given twice"),
        ({"test_groups": [["a", "b", "c"]]}, "holds every group"),
        ({"validation": 2}, "cross_validation.validation: 2 validation groups leave no"),
        ({"groups": ["a", "a"]}, "cross_validation: needs at least 2 groups, found 1"),
    ],
)
def test_plan_errors_name_the_key(cv: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        plan_ids({"a": 3, "b": 3, "c": 3}, **cv)
    assert message in info.value.problems[0]


def test_a_share_too_small_for_validation_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"percentage_val: 0\.3 of the 1 training"):
        plan_ids({"a": 1, "b": 1}, validation=0)


def test_ids_are_folder_safe_stable_and_sorted_naturally() -> None:
    assert sanitize("test-zone 1__val-2") == sanitize("test-zone 1__val-2")
    assert sanitize("test-zone 1__val-2").startswith("test-zone_1__val-2-")
    assert sanitize("test-zone/1__val-2") != sanitize("test-zone 1__val-2")
    assert sanitize("test-a.b+c=d__val-e") == "test-a.b+c=d__val-e"
    assert len(sanitize("x" * 300)) == 109
    assert sorted(["z10", "z2", "Z1"], key=natural_key) == ["Z1", "z2", "z10"]


def test_groups_from_a_column_or_a_pattern(demo_dir: Path) -> None:
    pairs = read_pairs(demo_dir / "zones.csv")
    by_column = group_rows(pairs, CrossValidation(group_column="zone"), demo_dir / "zones.csv")
    assert [r.group for r in by_column].count("1") == 8
    pattern = CrossValidation(group_pattern=r"tile_(\d+)_")  # one group per row of tiles
    by_row = group_rows(pairs, pattern, demo_dir / "zones.csv")
    assert {r.group for r in by_row} == {"00", "01", "02", "03", "04"}
    with pytest.raises(DataError, match="no column 'region' for cross_validation"):
        group_rows(pairs, CrossValidation(group_column="region"), demo_dir / "zones.csv")
    headerless = read_pairs(demo_dir / "train.csv")
    with pytest.raises(DataError, match="needs a header line"):
        group_rows(headerless, CrossValidation(group_column="zone"), demo_dir / "train.csv")
    with pytest.raises(DataError, match="finds no group in"):
        group_rows(pairs, CrossValidation(group_pattern=r"zone(\d)"), demo_dir / "zones.csv")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({}, "set exactly one of group_column"),
        ({"group_column": "zone", "group_pattern": "(x)"}, "set exactly one of group_column"),
        ({"group_pattern": "zone"}, "needs exactly one capture group"),
        ({"group_pattern": "(zone"}, "not a valid regular expression"),
        ({"group_column": "zone", "validation": "folds"}, "cross_validation.validation"),
        ({"group_column": "zone", "rotation": True}, "unknown key"),
        ({"group_column": "zone", "test_groups": [[]]}, "at least one group"),
    ],
)
def test_section_validation(make_cv_config, section: dict, message: str) -> None:
    config = make_cv_config()
    config["cross_validation"] = section
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    assert any(message in line and "cross_validation" in line for line in info.value.problems)


def test_task_config_is_a_plain_train_config(make_cv_config, tmp_path: Path) -> None:
    config = validate_config(make_cv_config())
    plan, _ = build_plan(
        group_rows(
            read_pairs(config.data_source.train_file),
            config.cross_validation,
            config.data_source.train_file,
        ),
        config.cross_validation,
        0.3,
    )
    task = plan.tasks[0]
    derived = task_config(config, task, tmp_path / "job")
    assert derived.cross_validation is None
    assert derived.data_source.train_file == tmp_path / "job" / "tasks" / task.id / "train.csv"
    assert derived.data_source.val_file.name == "val.csv"
    out = derived.output_setup
    assert (out.output_folder, out.name_exp_log, out.version_name) == (
        tmp_path / "job",
        "tasks",
        task.id,
    )


def test_prepare_job_checks_once_and_saves_the_job(make_cv_config, tmp_path: Path, caplog) -> None:
    config = make_cv_config(file="zones.csv")  # relative to the config file's folder
    demo = Path(config["data_source"]["train_file"]).parent
    config["data_source"]["train_file"] = str(demo / "train.csv")
    config["data_source"]["val_file"] = str(demo / "val.csv")
    path = write_config(demo / f"{tmp_path.name}.json", config)
    job, used = prepare_job(path, ["train_setup.testing=true"])
    assert "data_source.val_file not used by landseg cv" in caplog.text
    assert job.folder == tmp_path / "runs" / "job" and len(used) == 24
    assert job.csv_file == demo / "zones.csv"
    assert job.config.cross_validation.file == demo / "zones.csv"  # absolute in job.json too
    assert job.split_sizes["test-1__val-2"] == {"train": 8, "val": 8, "test": 8}
    assert not job.folder.exists()  # preparing writes nothing; the job's start does
    write_task_files(job, used)
    assert (job.folder / "rows.csv").read_text().startswith("image,mask,group\n")
    job.save()
    again = Job.load(job.folder)
    assert again.plan == job.plan and again.hashes == job.hashes
    assert again.summary == job.summary and again.config == job.config


def test_cv_needs_its_section(make_cv_config, tmp_path: Path, capsys) -> None:
    config = make_cv_config()
    del config["cross_validation"]
    path = write_config(tmp_path / "plain.json", config)
    assert main(["cv", "-c", str(path)]) == 2
    assert "no cross_validation section" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        prepare_job(path, [])
    assert load_config(path).cross_validation is None


def test_data_problems_name_the_row_of_the_job_csv(
    make_cv_config, demo_dir: Path, tmp_path: Path
) -> None:
    header, *rows = (demo_dir / "zones.csv").read_text().splitlines()
    absolute = [f"{demo_dir}/{image},{demo_dir}/{mask},{zone}" for image, mask, zone in (
        row.split(",") for row in rows
    )]  # fmt: skip
    broken = f"{demo_dir}/img/nope.tif,{demo_dir}/msk/nope.tif,3"
    (tmp_path / "zones.csv").write_text("\n".join([header, *absolute, broken]) + "\n")
    config = make_cv_config(file=str(tmp_path / "zones.csv"))
    with pytest.raises(DataError) as info:
        prepare_job(write_config(tmp_path / "cv.json", config), [])
    assert info.value.problems[0].startswith(f"{tmp_path / 'zones.csv'}, row 26: image ")
