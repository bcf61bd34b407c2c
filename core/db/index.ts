/** The db room: the only code that speaks SQL. Split by table family; rows checked with zod. */
export * from './pool';
export * from './rows';
export * from './experiments';
export * from './image-sets';
export * from './stage-sets';
export * from './results';
export * from './registration';
export * from './profiles';
