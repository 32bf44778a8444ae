from tests.appliances import appliance, appliances, launcher, secret  # noqa: F401
