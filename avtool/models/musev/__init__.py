"""MuseV (TMElyralab/MuseV): the 3D UNet (`unet`), the ReferenceNet (`referencenet`), the IP-Adapter image projection
(`ip_adapter`), their loaders (`loading`), the prompt encoding (`prompt`) and the model adapter the samplers call
(`denoiser`). Nothing is imported here, so that `config` (no torch) answers validation before torch loads."""
