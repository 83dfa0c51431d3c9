-module(scope_ulid_tests).
-include_lib("eunit/include/eunit.hrl").

%% The spec's example: time 1469918176385 encodes as 01ARYZ6S41.
known_time_test() ->
    Id = scope_ulid:encode(1469918176385, <<0:80>>),
    ?assertEqual(<<"01ARYZ6S410000000000000000">>, Id).

max_test() ->
    ?assertEqual(<<"7ZZZZZZZZZZZZZZZZZZZZZZZZZ">>, scope_ulid:encode((1 bsl 48) - 1, <<-1:80>>)).

fresh_ids_test() ->
    Ids = [scope_ulid:new(1700000000000) || _ <- lists:seq(1, 1000)],
    ?assertEqual(1000, length(lists:usort(Ids))),
    [?assertMatch(<<"01HF", _:22/binary>>, Id) || Id <- Ids],
    Alphabet = <<"0123456789ABCDEFGHJKMNPQRSTVWXYZ">>,
    [?assertNotEqual(nomatch, binary:match(Alphabet, <<C>>)) || Id <- Ids, <<C>> <= Id].

sorts_by_time_test() ->
    ?assert(scope_ulid:new(1700000000000) < scope_ulid:new(1700000000001)).
