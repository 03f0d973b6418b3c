"""Reading an evaluation's resume files (`<results>.parts/rankN.jsonl`): a file gnhub did not
write is refused in one line, naming it."""
from test_cli import assert_one_line_error, run
from test_eval import _tiny_coco


def test_a_part_that_is_not_utf8_is_refused_naming_it(small_dir, tmp_path):
    from gnhub import load
    from gnhub.evaluate import evaluate

    coco = _tiny_coco(tmp_path / "coco")
    results = tmp_path / "r.json"
    args = (str(small_dir), "--images", coco / "images", "--annotations", coco / "instances.json")
    evaluate(load(small_dir), images=coco / "images", annotations=coco / "instances.json", results=results)
    part = tmp_path / "r.json.parts" / "rank0.jsonl"
    lines = part.read_bytes().splitlines(keepends=True)
    part.write_bytes(lines[0] + b'{"image_id": 2, "detections": [], "note": "\xff"}\n')
    results.unlink()  # interrupted before the results were written
    proc = run("eval", *args, "--results", results)
    assert_one_line_error(proc, f"{part}: not a file gnhub wrote (not UTF-8 at byte ", "start over")
    assert not results.exists()
