import subprocess
import sys

from piseg.modeling.prompts import class_prompts
from taxonomy import load_taxonomy


def test_comma_names_use_their_first_part():
    prompts = class_prompts(load_taxonomy("vdd"))
    assert prompts[0] == "A photo of a other in the scene"
    assert prompts[4] == "A photo of a vehicle in the scene"
    assert len(class_prompts(load_taxonomy("ovrsis95k"))) == 35


def test_piseg_classes_command():
    result = subprocess.run(
        [sys.executable, "-m", "piseg.cli", "classes", "openearthmap"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "A photo of a bareland in the scene" in result.stdout
