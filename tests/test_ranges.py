from locality.ranges import subtract


def test_holes_cut_pieces_at_their_edges_and_leave_the_rest():
    pieces = [(0, 100), (200, 300)]
    assert subtract(pieces, [(50, 10)]) == [(0, 50), (60, 100), (200, 300)]
    assert subtract(pieces, [(90, 120)]) == [(0, 90), (210, 300)]  # one hole across two pieces
    assert subtract(pieces, [(0, 100), (200, 100)]) == []
    assert subtract(pieces, [(100, 100)]) == pieces  # touching, not overlapping
    assert subtract([(0, 10)], []) == [(0, 10)]
