import pathlib
import sys

# tests/model/model_configs.py holds the small decoder config the model tests share.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "model"))
