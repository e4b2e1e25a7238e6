VAR t2 = 5

The value of a variable in test file 2 is { t2 }.

== knot_in_2 ==
 The value when accessed from knot_in_2 is { t2 }.
 -> END