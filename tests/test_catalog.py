from atom_actors.catalog import CATALOG

CANON = [("personal", 28), ("business", 43), ("government", 18), ("creative_studio", 42),
         ("community", 12), ("social_media", 15), ("entertainment", 8), ("my_team", 35),
         ("scholar", 25), ("transport", 50), ("societal", 20), ("environment", 25),
         ("privacy", 8), ("jeunesse", 15), ("dashboard", 6)]


def test_catalog_is_the_canon_in_order():
    assert [(s.name, s.count) for s in CATALOG.spheres] == CANON
    assert CATALOG.size == 350


def test_agent_ids_are_contiguous_in_catalog_order():
    assert CATALOG.spheres[0].agent_ids == range(0, 28)
    assert CATALOG.by_name["transport"].agent_ids == range(226, 276)
    assert CATALOG.spheres[-1].agent_ids == range(344, 350)
    assert CATALOG.sphere_of(349).name == "dashboard"


def test_every_sphere_has_a_colour_and_functions():
    for s in CATALOG.spheres:
        assert s.color.startswith("#") and len(s.color) == 7
        assert s.functions
