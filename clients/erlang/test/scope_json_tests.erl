-module(scope_json_tests).
-include_lib("eunit/include/eunit.hrl").

enc(T) -> iolist_to_binary(scope_json:encode(T)).

encode_test_() ->
    [?_assertEqual(<<"{\"a\":1,\"b\":[true,false,null],\"c\":\"x\"}">>,
                   enc(#{a => 1, <<"b">> => [true, false, null], c => <<"x">>})),
     ?_assertEqual(<<"\"q\\\"b\\\\n\\nt\\tc\\u0001\"">>, enc(<<"q\"b\\n\nt\tc", 1>>)),
     ?_assertEqual(<<"\"KIND_CALL\"">>, enc('KIND_CALL')),
     ?_assertEqual(<<"[]">>, enc([])),
     ?_assertEqual(<<"{}">>, enc(#{})),
     ?_assertEqual(<<"\"", 16#c3, 16#a9, "\"">>, enc(<<"é"/utf8>>))].

decode_test_() ->
    [?_assertEqual(#{<<"code">> => <<"unavailable">>, <<"n">> => -12, <<"f">> => 1.5e3,
                     <<"l">> => [1, <<"a">>, #{}], <<"t">> => true, <<"z">> => null},
                   scope_json:decode(<<" {\"code\" : \"unavailable\", \"n\":-12,\"f\":1.5E3,",
                                       "\"l\":[1,\"a\",{}],\"t\":true,\"z\":null} ">>)),
     ?_assertEqual(<<"a\"\\/\n", 16#e2, 16#82, 16#ac, 16#f0, 16#9f, 16#98, 16#80>>,
                   scope_json:decode(<<"\"a\\\"\\\\\\/\\n\\u20ac\\ud83d\\ude00\"">>)),
     ?_assertEqual(100000.0, scope_json:decode(<<"1e5">>)),
     ?_assertError({invalid_json, _}, scope_json:decode(<<"{\"a\":}">>)),
     ?_assertError({invalid_json, _}, scope_json:decode(<<"[1,2">>)),
     ?_assertError({invalid_json, _}, scope_json:decode(<<"{} x">>))].

round_trip_test() ->
    T = #{<<"events">> => [#{<<"payload">> => <<"{ok,\"x\\y\"}", 0, 31, "é"/utf8>>, <<"arity">> => 3}],
          <<"durability">> => <<"DURABILITY_COMMITTED">>},
    ?assertEqual(T, scope_json:decode(enc(T))).
