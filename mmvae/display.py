"""How outputs show a modality, and which modality a shown name means; imports nothing heavy, so the command
line checks a modality name before it loads JAX or a checkpoint."""

# The one place a modality name becomes a display label: on a dataset whose modalities are exactly these
# (VoxCeleb-style), audio is shown as "voice". Metric keys and file names always use the modality names.
VOICE_FACE = {"audio": "voice", "face": "face"}


def display_labels(names) -> dict:
  """{modality: how report.md, figures and summaries show it} (its name, but 'voice' for audio beside face)."""
  names = list(names)
  return dict(VOICE_FACE) if set(names) == set(VOICE_FACE) else {n: n for n in names}


def modality_named(name: str, modalities, flag: str = "--modality", where: str = "the run") -> str:
  """The modality of `modalities` that `name` means: itself, or the modality outputs show as `name` ('voice' is
  'audio'); ValueError listing the modalities (with their shown names) otherwise."""
  modalities = list(modalities)
  if name in modalities:
    return name
  shown_as = {label: modality for modality, label in VOICE_FACE.items() if modality in modalities}
  if name in shown_as:
    return shown_as[name]
  have = ", ".join(m + (f" (shown as {VOICE_FACE[m]})" if m in shown_as.values() and VOICE_FACE[m] != m else "")
                   for m in modalities)
  raise ValueError(f"{flag} {name!r} is not a modality of {where} (it has {have})")
