"""Integrations of conveyor with other frameworks, each imported only when asked for (its
framework is an optional dependency): `conveyor.contrib.django`, a Django Tasks backend."""
